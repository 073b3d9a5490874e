"""Which convolutions of a backbone become ``CSRConv``, and with which number of steps T.

A :class:`CSRPolicy` is an ordered list of :class:`Rule` s. Every conv a backbone creates asks the
policy about itself (its module path, its *role*, the index of the block it sits in, its channel
counts); the first rule that matches decides its T, and no matching rule means an ordinary conv.
Policies are plain data (frozen dataclasses of ints, strings and tuples), so they hash, compare,
and round-trip through dicts/JSON: an experiment config can carry one verbatim.

The paper publishes per-layer choices only for MobileNetV2 (the authors' notebook); the
``reference`` presets reproduce those exactly. For the other backbones the ``t{N}`` presets are
ours, chosen to remove most parameters, and each says why in its ``description``.

Mistakes are errors, never silent no-ops: an unknown role, a T below 1, or (checked by
``csr_jax.models.create``) a rule that decides no layer of the model all raise
:class:`PolicyError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "ROLES",
    "ConvSite",
    "CSRPolicy",
    "Decision",
    "PolicyError",
    "Rule",
    "check_coverage",
    "decide",
    "get_preset",
    "preset_names",
    "preset_reasons",
    "trace_decisions",
]


class PolicyError(ValueError):
    """A CSR policy is malformed or does not fit the model it is applied to."""


# The vocabulary of layer roles. Backbones tag every conv they create with exactly one of these;
# a rule naming anything else is rejected when the rule is built.
ROLES: dict[str, str] = {
    "stem": "the first conv, the one that sees the image (3 input channels)",
    "conv3x3": "a full (ungrouped) 3x3 conv inside a block: VGG layers, ResNet basic blocks, the "
    "middle conv of a ResNet-50 bottleneck, DenseNet layers",
    "reduce": "the 1x1 conv that narrows channels at the start of a ResNet-50 bottleneck",
    "expand": "a 1x1 conv that widens channels: the first conv of an inverted residual "
    "(MobileNetV2, EfficientNet) and the last conv of a ResNet-50 bottleneck",
    "project": "the 1x1 conv that narrows channels at the end of an inverted residual",
    "depthwise": "a depthwise conv (one filter per channel)",
    "downsample": "the 1x1 projection shortcut of a ResNet-50 bottleneck",
    "transition": "the 1x1 conv of a DenseNet transition layer",
    "se": "a 1x1 conv of a squeeze-and-excitation gate (EfficientNet)",
    "head": "the 1x1 conv that widens features before global pooling (MobileNetV2, EfficientNet)",
}


@dataclasses.dataclass(frozen=True)
class ConvSite:
    """Everything a policy may look at to decide one conv (filled in by the backbone).

    ``path`` is the conv's module path joined with '/', e.g. ``'block_6/expand'``; ``block`` is
    the 1-based index of the block the conv belongs to in the backbone's own block numbering
    (documented on each backbone), or None for convs outside the blocks (stem, head).
    """

    path: str
    role: str
    block: int | None
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    groups: int = 1
    use_bias: bool = False

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome for one conv: ``steps == 1`` means an ordinary ``nn.Conv``.

    ``rule`` is the index of the rule that decided it (None: no rule matched).
    """

    steps: int
    rule: int | None


def _as_tuple(value: Any) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PolicyError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class Rule:
    """One line of a policy: "convs matching all of these selectors get T = ``steps``".

    Selectors (all optional; a conv must satisfy every one that is set):
      roles: role names from :data:`ROLES`.
      blocks: inclusive 1-based range ``(first, last)`` of block indices; convs outside any block
        (stem, head) never match a rule that sets ``blocks``.
      path: a regular expression searched (``re.search``) in the conv's module path.
      min_channels: the conv matches only if ``min(C_in, C_out) >= min_channels``.

    ``steps == 1`` keeps the matched convs ordinary: put such a rule first to exclude layers from
    a broader rule below it. ``only_if_smaller`` replaces a matched conv only where the CSR layer
    has fewer parameters than the conv it replaces (for a 1x1 conv that widens C -> rC, CSR costs
    ``(1 + r) / T^2`` of the conv, so a 6x expansion needs T >= 3 to save anything); the rule still
    counts as having decided the conv.
    """

    steps: int
    roles: tuple[str, ...] | None = None
    blocks: tuple[int, int] | None = None
    path: str | None = None
    min_channels: int = 1
    only_if_smaller: bool = False

    def __post_init__(self) -> None:
        _check_int(self.steps, "Rule.steps (the number of CSR steps T)", 1)
        roles = _as_tuple(self.roles)
        if roles is not None:
            if not roles:
                raise PolicyError("Rule.roles is empty; leave it out (None) to match every role.")
            unknown = [r for r in roles if r not in ROLES]
            if unknown:
                raise PolicyError(f"Unknown role(s) {unknown}; valid roles: {sorted(ROLES)}.")
        object.__setattr__(self, "roles", roles)
        blocks = _as_tuple(self.blocks)
        if blocks is not None:
            if len(blocks) != 2:
                raise PolicyError(f"Rule.blocks must be an inclusive range (first, last), got {self.blocks!r}.")
            first = _check_int(blocks[0], "Rule.blocks[0]", 1)
            last = _check_int(blocks[1], "Rule.blocks[1]", 1)
            if last < first:
                raise PolicyError(f"Rule.blocks range {blocks} is empty: first > last.")
        object.__setattr__(self, "blocks", blocks)
        if self.path is not None:
            try:
                re.compile(self.path)
            except re.error as e:
                raise PolicyError(f"Rule.path {self.path!r} is not a valid regular expression: {e}.") from e
        _check_int(self.min_channels, "Rule.min_channels", 1)
        if not isinstance(self.only_if_smaller, bool):
            raise PolicyError(f"Rule.only_if_smaller must be a bool, got {self.only_if_smaller!r}.")

    def matches(self, site: ConvSite) -> bool:
        """Whether every selector set on this rule accepts ``site``."""
        if self.roles is not None and site.role not in self.roles:
            return False
        if self.blocks is not None:
            if site.block is None or not self.blocks[0] <= site.block <= self.blocks[1]:
                return False
        if self.path is not None and re.search(self.path, site.path) is None:
            return False
        return min(site.in_channels, site.out_channels) >= self.min_channels

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from their defaults, lists for tuples (JSON-friendly)."""
        out: dict[str, Any] = {"steps": self.steps}
        if self.roles is not None:
            out["roles"] = list(self.roles)
        if self.blocks is not None:
            out["blocks"] = list(self.blocks)
        if self.path is not None:
            out["path"] = self.path
        if self.min_channels != 1:
            out["min_channels"] = self.min_channels
        if self.only_if_smaller:
            out["only_if_smaller"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"Unknown rule field(s) {unknown}; valid fields: {sorted(known)}.")
        if "steps" not in data:
            raise PolicyError(f"A rule needs 'steps' (the number of CSR steps T); got {dict(data)!r}.")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class CSRPolicy:
    """An ordered tuple of rules; the first rule matching a conv decides it.

    ``name`` and ``description`` are documentation: presets use ``description`` to say why
    they pick the layers they pick.
    """

    rules: tuple[Rule, ...]
    name: str = "custom"
    description: str = ""

    def __post_init__(self) -> None:
        rules = tuple(Rule.from_dict(r) if isinstance(r, Mapping) else r for r in _as_tuple(self.rules) or ())
        if not rules:
            raise PolicyError("A CSRPolicy needs at least one rule; use csr=None for the ordinary network.")
        for r in rules:
            if not isinstance(r, Rule):
                raise PolicyError(f"CSRPolicy.rules must hold Rule objects or dicts, got {type(r).__name__}.")
        object.__setattr__(self, "rules", rules)

    def decide(self, site: ConvSite) -> Decision:
        """T for one conv (1 = ordinary), and which rule decided it."""
        for index, rule in enumerate(self.rules):
            if rule.matches(site):
                steps = rule.steps
                if steps > 1 and rule.only_if_smaller and not _csr_is_smaller(site, steps):
                    steps = 1
                return Decision(steps, index)
        return Decision(1, None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CSRPolicy:
        known = {"name", "description", "rules"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"Unknown policy field(s) {unknown}; valid fields: {sorted(known)}.")
        if "rules" not in data:
            raise PolicyError("A policy dict needs 'rules': a list of {'steps': T, 'roles': [...], ...}.")
        return cls(
            rules=tuple(Rule.from_dict(r) for r in data["rules"]),
            name=data.get("name", "custom"),
            description=data.get("description", ""),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> CSRPolicy:
        return cls.from_dict(json.loads(text))


def _csr_is_smaller(site: ConvSite, steps: int) -> bool:
    # Imported here so that building and serialising policies does not pull in jax.
    from csr_jax.accounting import conv_params, csr_conv_params

    ordinary = conv_params(site.in_channels, site.out_channels, site.kernel_size,
                           use_bias=site.use_bias, groups=site.groups)
    csr = csr_conv_params(site.in_channels, site.out_channels, site.kernel_size, steps,
                          use_bias=site.use_bias, depthwise=site.depthwise)
    return csr < ordinary


# --------------------------------------------------------------------------------------------
# Recording what a model's convs decided (used by the "matches no layer" check and by reports).

_TRACE: contextvars.ContextVar[list[tuple[ConvSite, Decision]] | None] = contextvars.ContextVar(
    "csr_policy_trace", default=None)


def decide(policy: CSRPolicy | None, site: ConvSite) -> Decision:
    """What backbones call for each conv: the policy's decision, recorded if a trace is active."""
    if site.role not in ROLES:
        raise PolicyError(f"Backbone conv {site.path!r} has unknown role {site.role!r}; valid: {sorted(ROLES)}.")
    decision = Decision(1, None) if policy is None else policy.decide(site)
    if decision.steps > min(site.in_channels, site.out_channels):
        raise PolicyError(
            f"CSR policy {policy.name!r}, rule {decision.rule}: T={decision.steps} for conv {site.path!r} "
            f"({site.in_channels} -> {site.out_channels} channels), but every step needs at least one "
            f"input and one output channel; add min_channels={decision.steps} to the rule to skip such convs.")
    trace = _TRACE.get()
    if trace is not None:
        trace.append((site, decision))
    return decision


@contextlib.contextmanager
def trace_decisions() -> Iterator[list[tuple[ConvSite, Decision]]]:
    """Collect ``(site, decision)`` for every conv built inside the ``with`` block.

    Run a model's ``init`` (under ``jax.eval_shape``, so nothing is computed) inside it to get its
    full conv plan.
    """
    trace: list[tuple[ConvSite, Decision]] = []
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def check_coverage(policy: CSRPolicy, trace: Sequence[tuple[ConvSite, Decision]], model_name: str = "model") -> None:
    """Raise :class:`PolicyError` if a rule decided no conv of the traced model.

    A rule that fires nowhere is nearly always a typo (a role the backbone does not have, a block
    range past its end, a regex with a wrong name) or a rule shadowed by an earlier one.
    """
    if not trace:
        raise PolicyError(f"{model_name} created no convolutions; nothing for the policy to act on.")
    fired = {d.rule for _, d in trace if d.rule is not None}
    unused = [i for i in range(len(policy.rules)) if i not in fired]
    if unused:
        roles = sorted({s.role for s, _ in trace})
        blocks = sorted({s.block for s, _ in trace if s.block is not None})
        block_text = f"{blocks[0]}..{blocks[-1]}" if blocks else "none"
        lines = [f"  rule {i}: {policy.rules[i].to_dict()}" for i in unused]
        raise PolicyError(
            f"CSR policy {policy.name!r} has rule(s) that match no conv of {model_name} "
            f"(or only convs an earlier rule already decided):\n" + "\n".join(lines) +
            f"\n{model_name} has roles {roles} and blocks {block_text}; "
            f"example conv paths: {[s.path for s, _ in trace[:4]]}.")


# --------------------------------------------------------------------------------------------
# Presets. Keyed by backbone family (the registry maps model names to families).

_T_PRESET = re.compile(r"^t([0-9]+)$")
_LISTED_T = (2, 3, 4, 8)


def _t_rules(family: str, steps: int) -> tuple[tuple[Rule, ...], str]:
    if family == "vgg":
        return (Rule(steps, roles=("conv3x3",), min_channels=steps),), (
            "Every 3x3 conv after the stem becomes CSR. They are square or doubling convs "
            "(C -> C or C -> 2C), where CSR costs (C_in C_out + C_out^2) / T^2, i.e. 2/T^2 to 3/T^2 "
            "of the conv, and they hold all conv parameters but the stem's 1.7K. The stem (3 input "
            "channels) would save nothing. The fully connected classifier stays dense, so for the "
            "ImageNet VGG-16-BN, whose three FC layers hold 89% of the weights, the total falls "
            "by at most ~11%.")
    if family == "resnet_cifar":
        return (Rule(steps, roles=("conv3x3",), min_channels=steps),), (
            "Every 3x3 conv of every basic block becomes CSR: with the parameter-free (option A) "
            "shortcuts they hold all of the network's weights except the 3->16 stem (432), the "
            "classifier (650) and BatchNorm. Square convs cost 2/T^2 of the ordinary conv under CSR.")
    if family == "resnet_imagenet":
        return (Rule(steps, roles=("conv3x3", "reduce"), min_channels=steps),
                Rule(steps, roles=("expand", "downsample"), min_channels=steps, only_if_smaller=True)), (
            "All bottleneck convs and projection shortcuts become CSR, the 7x7 stem and the FC "
            "layer stay. The 3x3 convs (square, 2/T^2) and the narrowing 1x1 'reduce' convs "
            "(4C -> C, 1.25/T^2) always shrink; the widening 1x1 'expand' convs (C -> 4C, 5/T^2) "
            "and shortcuts (2C or 4C wider, 3/T^2 to 5/T^2) only shrink for T >= 3, so they are "
            "replaced only where CSR is smaller. The 2M-parameter FC layer bounds the reduction.")
    if family == "densenet":
        return (Rule(steps, roles=("conv3x3", "transition"), min_channels=steps),), (
            "Every dense-layer 3x3 conv and both transition 1x1 convs become CSR: together 98% "
            "of the weights. A dense layer maps a wide concatenation (16..436 channels) to 12 "
            "new ones, where CSR costs about 1/T^2 of the conv; the square transitions cost 2/T^2. "
            "Only the 3->16 stem and the classifier stay ordinary.")
    if family == "mobilenetv2":
        return (Rule(steps, roles=("project",), min_channels=steps),
                Rule(steps, roles=("expand", "head"), min_channels=steps, only_if_smaller=True)), (
            "All 1x1 convs of the inverted residuals and the 1x1 head conv (97% of the conv "
            "weights) become CSR where it pays: the narrowing 'project' convs (6C -> C', CSR costs "
            "1.2/T^2 to 1.3/T^2 of the conv) always; the widening 'expand' (C -> 6C, 7/T^2) and "
            "head (320 -> 1280, 5/T^2) convs only where CSR is smaller, i.e. from T = 3. The stem "
            "and the depthwise convs stay ordinary, as in the authors' configuration; the dense "
            "classifier (1.28M of 3.5M weights in the ImageNet net) bounds the reduction.")
    if family == "efficientnet":
        return (Rule(steps, roles=("project",), min_channels=steps),
                Rule(steps, roles=("expand", "head", "se"), min_channels=steps, only_if_smaller=True)), (
            "As for MobileNetV2: the narrowing 'project' convs always become CSR; the widening "
            "'expand' (C -> 6C) and head (320 -> 1280) convs and the squeeze-and-excitation convs "
            "(12% of the weights) where CSR is smaller: the SE squeeze conv (C -> C/24) from "
            "T = 2, expand and head from T = 3, the SE excite conv (C/24 -> C) from T = 5. Stem "
            "and depthwise convs stay ordinary; the 1.28M-weight classifier bounds the reduction.")
    raise PolicyError(f"No presets for backbone family {family!r}.")


_REFERENCE = {
    "mobilenetv2_cifar": CSRPolicy(
        rules=(Rule(3, roles=("expand",)), Rule(4, roles=("project",))),
        name="reference",
        description=(
            "The authors' configuration for the CIFAR-10 MobileNetV2 (their public notebook): in "
            "each of the 17 inverted-residual blocks the 1x1 expand conv becomes CSR with T=3 and "
            "the 1x1 project conv CSR with T=4, without bias; the stem, the depthwise 3x3 convs "
            "and the 1x1 head stay ordinary convs.")),
    "mobilenetv2_imagenet": CSRPolicy(
        rules=(Rule(3, roles=("expand",), blocks=(6, 17)), Rule(4, roles=("project",), blocks=(6, 17))),
        name="reference",
        description=(
            "The authors' configuration for the ImageNet MobileNetV2 (torchvision layout): in "
            "inverted-residual blocks 6..17 (1-based) the 1x1 expand conv becomes CSR with T=3 "
            "and the 1x1 project conv CSR with T=4, without bias; blocks 1..5, the stem, the "
            "depthwise convs and the head stay ordinary.")),
}

# Families whose t{N} rules come from _t_rules under another family name.
_T_FAMILY = {"mobilenetv2_cifar": "mobilenetv2", "mobilenetv2_imagenet": "mobilenetv2"}
FAMILIES = ("vgg", "resnet_cifar", "resnet_imagenet", "densenet", "mobilenetv2_cifar",
            "mobilenetv2_imagenet", "efficientnet")


def preset_names(family: str) -> list[str]:
    """Preset names listed for a family (any ``t{N}``, N >= 1, is accepted too)."""
    if family not in FAMILIES:
        raise PolicyError(f"Unknown backbone family {family!r}; valid: {list(FAMILIES)}.")
    names = [f"t{t}" for t in _LISTED_T]
    if family in _REFERENCE:
        names.insert(0, "reference")
    return names


def preset_reasons(family: str) -> dict[str, str]:
    """Why each preset of a family picks the layers it picks: ``{'reference': ..., 't{N}': ...}``
    (the ``t{N}`` text is shared by every N)."""
    preset_names(family)  # validates the family
    reasons = {"reference": _REFERENCE[family].description} if family in _REFERENCE else {}
    reasons["t{N}"] = _t_rules(_T_FAMILY.get(family, family), 2)[1]
    return reasons


def get_preset(family: str, name: str, *, model: str | None = None) -> CSRPolicy:
    """The named preset of a backbone family: ``'reference'`` where the authors published one,
    and ``'t{N}'`` for any N >= 1 (T = N on the family's parameter-heavy convs; t1 = ordinary).

    ``model`` only names the model in error messages.
    """
    valid = preset_names(family)
    if name == "reference" and family in _REFERENCE:
        return _REFERENCE[family]
    match = _T_PRESET.match(name) if isinstance(name, str) else None
    if match is None:
        raise PolicyError(f"Unknown CSR preset {name!r} for {model or family}; valid: {valid} "
                          "(or t<N> for any N >= 1).")
    steps = int(match.group(1))
    _check_int(steps, f"T in preset {name!r}", 1)
    rules, description = _t_rules(_T_FAMILY.get(family, family), steps)
    description += (f" T = {steps} throughout; a conv with fewer than {steps} input or output channels "
                    "stays ordinary, since every step needs at least one channel.") if steps > 1 else (
                    " With T = 1 every conv stays an ordinary conv: the baseline.")
    return CSRPolicy(rules=rules, name=name, description=description)
