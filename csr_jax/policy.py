"""Which convolutions become ``CSRConv``, and with which number of steps T: the one rule language.

A :class:`CSRPolicy` is an ordered list of :class:`Rule` s. Every conv asks the policy about
itself as a :class:`ConvSite` (its module path, its *role* and block index where a backbone of this
project tags them, its kernel size, channel counts and groups); the first rule that matches
decides its T, and no matching rule means an ordinary conv. The same policy drives both places
convs are made: the backbones of :mod:`csr_jax.models` (through ``ConvFactory``) and
:func:`csr_jax.surgery.convert` on a linen model this project did not write. Both record what they
decided with :func:`record` while a :func:`recording` is active, and both run the one
:func:`check_coverage` on that record, so a rule that decides nothing is an error everywhere.

Policies are plain data (frozen dataclasses of ints, strings and tuples), so they hash, compare,
and round-trip through dicts/JSON: an experiment config can carry one verbatim (see
:func:`parse_csr`). So are the presets: each backbone file registers its :class:`Presets` (named
policies, and a :class:`TPreset` saying which roles the ``t{N}`` presets replace and where CSR
pays) next to the model.

This module imports neither jax nor flax; ``only_if_smaller`` loads the closed-form counts of
:mod:`csr_jax.accounting` when a rule with it is first asked about a conv.

Mistakes are errors, never silent no-ops: an unknown role, a T below 1, a T above a backbone
conv's channel count, or a rule that decides no conv of the model all raise :class:`PolicyError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "ROLES",
    "ConvSite",
    "CSRPolicy",
    "Decision",
    "PolicyError",
    "Presets",
    "Rule",
    "TPreset",
    "check_coverage",
    "decide",
    "parse_csr",
    "record",
    "recording",
]


class PolicyError(ValueError):
    """A CSR policy is malformed or does not fit the model it is applied to."""


# The vocabulary of layer roles. Backbones tag every conv they create with exactly one of these;
# a rule naming anything else is rejected when the rule is built. Convs of a foreign model have
# no role (None): rules select them by path, kernel size, channels and groups.
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

# Outcomes of a decision (``Decision.status``).
CSR = "csr"  # becomes a CSRConv with T = steps
KEPT = "kept"  # a rule with steps == 1 keeps it ordinary
NOT_SMALLER = "not_smaller"  # an only_if_smaller rule found CSR no smaller
UNMATCHED = "unmatched"  # no rule selected it
UNSUPPORTED = "unsupported"  # a rule selected it, but CSRConv cannot represent it (surgery only)


@dataclasses.dataclass(frozen=True)
class ConvSite:
    """Everything a policy may look at to decide one conv.

    ``path`` is the conv's module path joined with '/', e.g. ``'block_6/expand'``. ``role`` and
    ``block`` are tags that this project's backbones attach (``block`` is the 1-based index of
    the block the conv belongs to in the backbone's own numbering, documented on each backbone;
    None for convs outside the blocks, such as stem and head); a foreign model's convs have
    neither. ``kernel_size`` and ``strides`` have one entry per spatial axis. ``out_hw`` (the
    output's spatial size) is filled in once the conv has run, ``layer`` names its linen class;
    both are for reports, not for rules.
    """

    path: str
    role: str | None
    block: int | None
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    groups: int = 1
    use_bias: bool = False
    strides: tuple[int, ...] = (1, 1)
    out_hw: tuple[int, ...] | None = None
    layer: str = "Conv"

    @property
    def depthwise(self) -> bool:
        """One filter per channel: ``groups == C_in == C_out`` (and more than one group)."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome for one conv: ``steps == 1`` means an ordinary conv.

    ``rule`` is the index of the rule that decided it (None: no rule matched); ``status`` one of
    ``'csr'``, ``'kept'`` (a rule with T = 1), ``'not_smaller'`` (an ``only_if_smaller`` rule
    found CSR no smaller), ``'unmatched'`` or, from surgery only, ``'unsupported'``; ``reason``
    says why a conv stays ordinary.
    """

    steps: int
    rule: int | None
    status: str = CSR
    reason: str = ""


def _as_tuple(value: Any) -> tuple | None:
    """None stays None, a string is one item, any other iterable becomes a tuple."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PolicyError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return value


def _check_regex(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a regular expression string or None, got {value!r}.")
    try:
        re.compile(value)
    except re.error as e:
        raise PolicyError(f"{what} {value!r} is not a valid regular expression: {e}.") from e


def _kernel_sizes(value: Any) -> tuple[tuple[int, ...], ...] | None:
    """Normalises ``3``, ``(1, 3)`` (1x1 and 3x3) or ``[(1, 3)]`` (a 1x3 kernel) to a tuple of pairs."""
    if value is None:
        return None
    bad = PolicyError(
        f"Rule.kernel_sizes must be an int k (for k x k), or a sequence of ints and (kh, kw) pairs, "
        f"e.g. (1, 3) for 1x1 and 3x3 convs or [(1, 3)] for a 1x3 conv; got {value!r}."
    )

    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    items = [value] if positive(value) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise bad
    out = []
    for (
        item
    ) in items:  # an int item is a square size; a non-square kernel is a pair in the sequence
        if positive(item):
            out.append((item, item))
        elif (
            isinstance(item, Sequence)
            and not isinstance(item, str)
            and item
            and all(map(positive, item))
        ):
            out.append(tuple(int(v) for v in item))
        else:
            raise bad
    return tuple(out)


def _fmt_kernel(kernel: Sequence[int]) -> str:
    return "x".join(str(k) for k in kernel)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One line of a policy: "convs matching all of these selectors get T = ``steps``".

    Selectors (all optional; a conv must satisfy every one that is set):
      roles: role names from :data:`ROLES` (this project's backbones only).
      blocks: inclusive 1-based range ``(first, last)`` of block indices; convs outside any block
        (stem, head, every conv of a foreign model) never match a rule that sets ``blocks``.
      path: a regular expression searched (``re.search``) in the conv's module path, e.g.
        ``'block_[3-9]/'``; the path is the names joined by '/', as in the params tree.
      exclude: a regular expression; a conv whose path it finds is not matched by this rule.
      kernel_sizes: allowed kernel sizes: ``3``, ``(1, 3)`` (1x1 and 3x3) or ``[(1, 3)]`` (1x3).
      min_channels: the conv matches only if ``min(C_in, C_out) >= min_channels``.
      min_in_channels / min_out_channels: smallest C_in / C_out a matched conv may have.
      groups: the conv's exact ``feature_group_count``.
      depthwise: True matches depthwise convs only, False everything but depthwise convs, None
        (default) both. A depthwise conv becomes a depthwise CSR layer.

    Outcome:
      steps: T. ``steps == 1`` keeps the matched convs ordinary: put such a rule first to carve
        an exception out of a broader rule below it.
      only_if_smaller: replace a matched conv only where the CSR layer has fewer parameters than
        the conv (for a 1x1 conv that widens C -> rC, CSR costs ``(1 + r) / T^2`` of the conv,
        so a 6x expansion needs T >= 3 to save anything); the rule still counts as having
        decided the conv.
      use_conv_init: initialise the CSR kernels and biases with the conv's own initializers
        instead of the reference's U(+-1/sqrt(fan_in)).
    """

    steps: int
    roles: tuple[str, ...] | None = None
    blocks: tuple[int, int] | None = None
    path: str | None = None
    exclude: str | None = None
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None
    min_channels: int = 1
    min_in_channels: int = 1
    min_out_channels: int = 1
    groups: int | None = None
    depthwise: bool | None = None
    only_if_smaller: bool = False
    use_conv_init: bool = False

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
                raise PolicyError(
                    f"Rule.blocks must be an inclusive range (first, last), got {self.blocks!r}."
                )
            first = _check_int(blocks[0], "Rule.blocks[0]", 1)
            last = _check_int(blocks[1], "Rule.blocks[1]", 1)
            if last < first:
                raise PolicyError(f"Rule.blocks range {blocks} is empty: first > last.")
        object.__setattr__(self, "blocks", blocks)
        _check_regex(self.path, "Rule.path")
        _check_regex(self.exclude, "Rule.exclude")
        object.__setattr__(self, "kernel_sizes", _kernel_sizes(self.kernel_sizes))
        for name in ("min_channels", "min_in_channels", "min_out_channels"):
            _check_int(getattr(self, name), f"Rule.{name}", 1)
        if self.groups is not None:
            _check_int(self.groups, "Rule.groups", 1)
        if self.depthwise is not None and not isinstance(self.depthwise, bool):
            raise PolicyError(
                f"Rule.depthwise must be True, False or None, got {self.depthwise!r}."
            )
        for name in ("only_if_smaller", "use_conv_init"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"Rule.{name} must be a bool, got {getattr(self, name)!r}.")

    def mismatch(self, site: ConvSite) -> str | None:
        """Why this rule does not match ``site`` (the first selector that rejects it), or None."""
        if self.roles is not None and site.role not in self.roles:
            if site.role is None:
                return "the conv has no role (roles tag this project's backbones; select by path)"
            return f"role {site.role!r} not in roles {list(self.roles)}"
        if self.blocks is not None:
            if site.block is None:
                return "the conv is outside any block"
            if not self.blocks[0] <= site.block <= self.blocks[1]:
                return f"block {site.block} outside blocks {self.blocks[0]}..{self.blocks[1]}"
        if self.path is not None and re.search(self.path, site.path) is None:
            return f"path not matched by path={self.path!r}"
        if self.exclude is not None and re.search(self.exclude, site.path) is not None:
            return f"path matched by exclude={self.exclude!r}"
        if self.kernel_sizes is not None and tuple(site.kernel_size) not in self.kernel_sizes:
            sizes = ", ".join(_fmt_kernel(k) for k in self.kernel_sizes)
            return f"kernel {_fmt_kernel(site.kernel_size)} not in ({sizes})"
        if min(site.in_channels, site.out_channels) < self.min_channels:
            return f"min(C_in, C_out)={min(site.in_channels, site.out_channels)} < min_channels={self.min_channels}"
        if site.in_channels < self.min_in_channels:
            return f"C_in={site.in_channels} < min_in_channels={self.min_in_channels}"
        if site.out_channels < self.min_out_channels:
            return f"C_out={site.out_channels} < min_out_channels={self.min_out_channels}"
        if self.groups is not None and site.groups != self.groups:
            return f"groups={site.groups}, rule has groups={self.groups}"
        if self.depthwise is not None and site.depthwise != self.depthwise:
            return (
                "depthwise conv (rule has depthwise=False)"
                if site.depthwise
                else "not a depthwise conv (rule has depthwise=True)"
            )
        return None

    def matches(self, site: ConvSite) -> bool:
        """Whether every selector set on this rule accepts ``site``."""
        return self.mismatch(site) is None

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from their defaults, lists for tuples (JSON-friendly)."""
        out: dict[str, Any] = {"steps": self.steps}
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = (
                    [list(v) if isinstance(v, tuple) else v for v in value]
                    if isinstance(value, tuple)
                    else value
                )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"Unknown rule field(s) {unknown}; valid fields: {sorted(known)}.")
        if "steps" not in data:
            raise PolicyError(
                f"A rule needs 'steps' (the number of CSR steps T); got {dict(data)!r}."
            )
        return cls(**data)

    def describe(self) -> str:
        """The rule as a constructor call with its non-default fields."""
        return "Rule(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


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
        if isinstance(self.rules, (Rule, Mapping)):
            raise PolicyError("CSRPolicy.rules must be a sequence of rules, e.g. rules=(Rule(2),).")
        rules = tuple(
            Rule.from_dict(r) if isinstance(r, Mapping) else r for r in _as_tuple(self.rules) or ()
        )
        if not rules:
            raise PolicyError(
                "A CSRPolicy needs at least one rule; use csr=None for the ordinary network."
            )
        for i, r in enumerate(rules):
            if not isinstance(r, Rule):
                raise PolicyError(
                    f"CSRPolicy.rules[{i}] is a {type(r).__name__}, not a Rule or its dict: {r!r}."
                )
        object.__setattr__(self, "rules", rules)

    def decide(self, site: ConvSite) -> Decision:
        """T for one conv (1 = ordinary), which rule decided it, and why it stays ordinary."""
        misses = []
        for index, rule in enumerate(self.rules):
            miss = rule.mismatch(site)
            if miss is not None:
                misses.append(f"rule {index}: {miss}")
                continue
            if rule.steps == 1:
                return Decision(1, index, KEPT, f"kept by rule {index} (T=1)")
            if rule.only_if_smaller and len(site.kernel_size) == 2:
                ordinary, csr = _param_counts(site, rule.steps)
                if csr >= ordinary:
                    return Decision(
                        1,
                        index,
                        NOT_SMALLER,
                        f"CSR with T={rule.steps} has {csr:,} params, the conv {ordinary:,}",
                    )
            return Decision(rule.steps, index, CSR)
        return Decision(1, None, UNMATCHED, "; ".join(misses))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rules": [r.to_dict() for r in self.rules],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CSRPolicy:
        known = {"name", "description", "rules"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"Unknown policy field(s) {unknown}; valid fields: {sorted(known)}.")
        if "rules" not in data:
            raise PolicyError(
                "A policy dict needs 'rules': a list of {'steps': T, 'roles': [...], ...}."
            )
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


def _param_counts(site: ConvSite, steps: int) -> tuple[int, int]:
    """(ordinary conv, CSR layer) parameters of a 2-D conv site."""
    # Imported here so that building and serialising policies does not pull in jax.
    from csr_jax.accounting import conv_params, csr_conv_params

    ordinary = conv_params(
        site.in_channels,
        site.out_channels,
        site.kernel_size,
        use_bias=site.use_bias,
        groups=site.groups,
    )
    csr = csr_conv_params(
        site.in_channels,
        site.out_channels,
        site.kernel_size,
        steps,
        use_bias=site.use_bias,
        depthwise=site.depthwise,
    )
    return ordinary, csr


def parse_csr(value: Any) -> Any:
    """A config's ``csr`` text as what ``csr_jax.models.create(csr=...)`` takes.

    A JSON object (``'{"rules": [{"steps": 2, "roles": ["conv3x3"]}]}'``) becomes its dict and a
    path to a ``.json`` file the dict it holds (the form :meth:`CSRPolicy.to_json` writes); any
    other string is a preset name and comes back unchanged, as does every non-string value.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(
                f"csr looks like a JSON policy but does not parse ({e}): {text[:80]!r}."
            ) from e
    elif text.lower().endswith(".json"):
        if not os.path.isfile(text):
            raise PolicyError(
                f"csr names the policy file {text!r}, which does not exist; write one with "
                "CSRPolicy.to_json(), or give a preset name or the JSON text itself."
            )
        with open(text, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise PolicyError(f"The policy file {text!r} is not valid JSON: {e}.") from e
    else:
        return value
    if not isinstance(data, dict):
        raise PolicyError(
            f"A JSON policy must be an object with 'rules', got {type(data).__name__}."
        )
    CSRPolicy.from_dict(data)  # validate now, with the policy's own error messages
    return data


# --------------------------------------------------------------------------------------------
# Recording what a model's convs decided: the backbones (ConvFactory) and surgery both report
# every conv they create here; models.create and surgery.convert check the record.

_RECORD: contextvars.ContextVar[list[tuple[ConvSite, Decision]] | None] = contextvars.ContextVar(
    "csr_policy_record", default=None
)


def record(site: ConvSite, decision: Decision) -> None:
    """Adds one conv call and its decision to the active :func:`recording`, if any.

    Called after the conv ran, with ``site.out_hw`` filled in; a conv called twice is recorded twice.
    """
    active = _RECORD.get()
    if active is not None:
        active.append((site, decision))


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[ConvSite, Decision]]]:
    """Collect ``(site, decision)`` for every conv created inside the ``with`` block.

    Run a model's ``init`` (under ``jax.eval_shape``, so nothing is computed) inside it to get its
    full conv plan.
    """
    calls: list[tuple[ConvSite, Decision]] = []
    token = _RECORD.set(calls)
    try:
        yield calls
    finally:
        _RECORD.reset(token)


def decide(policy: CSRPolicy | None, site: ConvSite) -> Decision:
    """What a backbone calls for each conv it creates (then :func:`record` s it once built).

    Stricter than :meth:`CSRPolicy.decide`, because a backbone's convs are under this project's
    control: the site must carry a known role, and a T above the conv's channel count is an
    error (surgery reports such a conv as unsupported instead).
    """
    if site.role not in ROLES:
        raise PolicyError(
            f"Backbone conv {site.path!r} has unknown role {site.role!r}; valid: {sorted(ROLES)}."
        )
    decision = Decision(1, None, UNMATCHED) if policy is None else policy.decide(site)
    if decision.steps > min(site.in_channels, site.out_channels):
        raise PolicyError(
            f"CSR policy {policy.name!r}, rule {decision.rule}: T={decision.steps} for conv {site.path!r} "
            f"({site.in_channels} -> {site.out_channels} channels), but every step needs at least one "
            f"input and one output channel; add min_channels={decision.steps} to the rule to skip such convs."
        )
    return decision


def check_coverage(
    policy: CSRPolicy,
    calls: Sequence[tuple[ConvSite, Decision]],
    model_name: str = "model",
    *,
    hint: str = "",
) -> tuple[int, ...]:
    """Raise :class:`PolicyError` if a rule decided no conv of the recorded model.

    A rule that fires nowhere is nearly always a typo (a role the model does not have, a block
    range past its end, a regex with a wrong name) or a rule shadowed by an earlier one. The
    message lists what the model does have. ``hint`` is appended to it (e.g. how to allow unused
    rules). Returns the indices of unused rules (always empty when it returns).
    """
    unused = unused_rules(policy, calls)
    if not calls:
        raise PolicyError(
            f"{model_name} created no convolutions; nothing for the policy to act on."
        )
    if unused:
        roles = sorted({s.role for s, _ in calls if s.role is not None})
        blocks = sorted({s.block for s, _ in calls if s.block is not None})
        block_text = f"{blocks[0]}..{blocks[-1]}" if blocks else "none"
        convs = [
            f"{s.path or '<root>'} ({s.in_channels}->{s.out_channels}, {_fmt_kernel(s.kernel_size)}"
            + (f", groups={s.groups}" if s.groups > 1 else "")
            + (f", decided by rule {d.rule}" if d.rule is not None else "")
            + ")"
            for s, d in calls[:8]
        ]
        more = f" and {len(calls) - 8} more" if len(calls) > 8 else ""
        lines = [f"  rule {i}: {policy.rules[i].to_dict()}" for i in unused]
        tags = (
            f"{model_name} has roles {roles} and blocks {block_text}"
            if roles
            else f"{model_name}'s convs have no roles or blocks (those tag this project's backbones; "
            "select by path, kernel size, channels or groups)"
        )
        raise PolicyError(
            f"CSR policy {policy.name!r} has rule(s) that match no conv of {model_name} "
            f"(or only convs an earlier rule already decided):\n"
            + "\n".join(lines)
            + f"\n{tags}; its convs: {', '.join(convs)}{more}."
            + (f"\n{hint}" if hint else "")
        )
    return unused


def unused_rules(policy: CSRPolicy, calls: Sequence[tuple[ConvSite, Decision]]) -> tuple[int, ...]:
    """Indices of the rules that decided none of the recorded convs."""
    fired = {d.rule for _, d in calls if d.rule is not None}
    return tuple(i for i in range(len(policy.rules)) if i not in fired)


# --------------------------------------------------------------------------------------------
# Presets as data. Each backbone file builds its Presets and registers them with its models.

_T_PRESET = re.compile(r"^t([0-9]+)$")
LISTED_T = (2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class TPreset:
    """The ``t{N}`` presets of a backbone as data: T = N on the roles where CSR pays.

    ``always`` lists the roles replaced wherever a conv has at least N channels on both sides;
    ``where_smaller`` the roles replaced only where the CSR layer has fewer parameters than the
    conv (widening 1x1 convs, which CSR only shrinks from some T on); ``why`` explains the choice
    for the README and ``describe_presets``.
    """

    always: tuple[str, ...]
    why: str
    where_smaller: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for roles in (self.always, self.where_smaller):
            Rule(1, roles=roles) if roles else None  # validates the role names

    def policy(self, steps: int, name: str) -> CSRPolicy:
        """The policy ``t{steps}``."""
        rules = [Rule(steps, roles=self.always, min_channels=steps)]
        if self.where_smaller:
            rules.append(
                Rule(steps, roles=self.where_smaller, min_channels=steps, only_if_smaller=True)
            )
        description = self.why + (
            (
                f" T = {steps} throughout; a conv with fewer than {steps} input or output channels "
                "stays ordinary, since every step needs at least one channel."
            )
            if steps > 1
            else " With T = 1 every conv stays an ordinary conv: the baseline."
        )
        return CSRPolicy(rules=tuple(rules), name=name, description=description)


@dataclasses.dataclass(frozen=True)
class Presets:
    """A backbone's presets: named policies (e.g. the authors' ``'reference'``) and ``t{N}``."""

    t: TPreset
    named: Mapping[str, CSRPolicy] = dataclasses.field(default_factory=dict)

    def names(self) -> list[str]:
        """Preset names to list (any ``t{N}``, N >= 1, is accepted too)."""
        return [*self.named, *(f"t{t}" for t in LISTED_T)]

    def reasons(self) -> dict[str, str]:
        """Why each preset picks its layers: ``{name: ..., 't{N}': ...}`` (one text for every N)."""
        return {**{name: p.description for name, p in self.named.items()}, "t{N}": self.t.why}

    def get(self, name: str, model: str = "model") -> CSRPolicy:
        """The named preset, or ``t{N}`` for any N >= 1 (t1 = the ordinary network)."""
        if isinstance(name, str) and name in self.named:
            return self.named[name]
        match = _T_PRESET.match(name) if isinstance(name, str) else None
        if match is None:
            raise PolicyError(
                f"Unknown CSR preset {name!r} for {model}; valid: {self.names()} "
                "(or t<N> for any N >= 1)."
            )
        steps = _check_int(int(match.group(1)), f"T in preset {name!r}", 1)
        return self.t.policy(steps, name)
