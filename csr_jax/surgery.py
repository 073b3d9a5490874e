"""CSR surgery: turn the ``nn.Conv`` layers of any ``flax.linen`` model into ``CSRConv``.

The models this is for are ones this project did not write, so their code cannot be edited. The
conversion therefore happens at call time: :func:`convert` wraps the model in
:class:`CSRConverted`, whose methods run the original model under an ``nn.intercept_methods``
interceptor. When a conv that a rule selects is called, the interceptor computes a ``CSRConv``
bound to *that conv's own scope* instead of the conv; so the CSR parameters live exactly where the
conv's did (``.../Conv_3/input_kernel`` instead of ``.../Conv_3/kernel``), every other variable
keeps its path, and the wrapper shares the model's root scope, so the variable tree has the
original model's layout. The wrapper is an ordinary linen module: ``init``, ``apply``, ``jax.jit``,
``mutable=['batch_stats']``, rng streams and the model's other methods all work as before.

Convs are never silently mis-converted. A conv that a rule selects but that ``CSRConv`` cannot
represent exactly (grouped but not depthwise, dilated, 1-D/3-D, transposed, locally connected,
circular/reflect/causal padding, masked, a custom conv op, an even kernel with T > 1, T above the
channel count) stays an ordinary conv and is listed in the report with the reason. A rule that
decides no conv at all raises :class:`SurgeryError` (nearly always a typo in a regex or a
shadowed rule) unless ``allow_unused_rules=True``, in which case it is listed in the report.

The report comes from one abstract ``init`` under ``jax.eval_shape`` (nothing is computed), with
parameter and MAC counts from the closed forms in :mod:`csr_jax.accounting`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import re
import types
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from flax.core import unfreeze
from flax.linen.dtypes import promote_dtype as _default_promote_dtype

from csr_jax.accounting import conv_macs, conv_params, count_params, csr_conv_macs, csr_conv_params
from csr_jax.csr_conv import CSRConv

__all__ = [
    "ConvRule",
    "ConvRecord",
    "CSRConverted",
    "SurgeryError",
    "SurgeryReport",
    "convert",
    "transfer_weights",
]

# Layer types the surgery looks at. ``nn.Conv`` can be converted; the others are only reported.
_CONV_TYPES = (nn.Conv, nn.ConvLocal, nn.ConvTranspose)

# Statuses of a ``ConvRecord``.
CONVERTED = "converted"
UNMATCHED = "unmatched"  # no rule selected it
KEPT = "kept"  # a keep-rule selected it
UNSUPPORTED = "unsupported"  # a rule selected it, CSRConv cannot represent it
NOT_SMALLER = "not_smaller"  # only_if_smaller and CSR would not save parameters


class SurgeryError(ValueError):
    """A conversion rule is malformed or does not fit the model it is applied to."""


# ------------------------------------------------------------------------------------------------
# Rules


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SurgeryError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return value


def _check_regex(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SurgeryError(f"{what} must be a regular expression string or None, got {value!r}.")
    try:
        re.compile(value)
    except re.error as e:
        raise SurgeryError(f"{what} {value!r} is not a valid regular expression: {e}.") from e
    return value


def _kernel_sizes(value: Any) -> tuple[tuple[int, int], ...] | None:
    """Normalises ``3``, ``(3, 3)``, ``[1, 3]`` or ``[(1, 1), (3, 3)]`` to a tuple of pairs."""
    if value is None:
        return None
    bad = SurgeryError(
        f"ConvRule.kernel_sizes must be an int k (for k x k), a pair (kh, kw), or a sequence of "
        f"those, e.g. (1, 3) for 1x1 and 3x3 convs or [(1, 1), (3, 3)]; got {value!r}."
    )
    if isinstance(value, bool):
        raise bad
    items = [value] if isinstance(value, int) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise bad
    # An int item is a square size, so (1, 3) means "1x1 and 3x3" (the common intent); a
    # non-square kernel has to be written as a pair inside a sequence: [(1, 3)].
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            out.append((item, item))
        elif (
            isinstance(item, Sequence)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in item)
        ):
            out.append((int(item[0]), int(item[1])))
        else:
            raise bad
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ConvRule:
    """One line of a conversion: "convs matching all of these selectors become CSR with T=steps".

    Rules are tried in order and the first one that matches a conv decides it.

    Selectors (a conv must satisfy every one that is set):
      include: regex searched (``re.search``) in the conv's module path, e.g. ``'block[3-9]'``;
        the path is the names joined by '/', as in the params tree (``'encoder/Conv_2'``).
      exclude: regex; a conv whose path it finds is not matched by this rule.
      kernel_sizes: allowed kernel sizes: ``3``, ``(1, 3)`` (1x1 and 3x3) or ``[(1, 3)]`` (1x3).
      min_in_channels / min_out_channels: smallest C_in / C_out a matched conv may have.
      depthwise: whether depthwise convs (``feature_group_count == C_in == C_out``) match; they
        become depthwise CSR. Off by default: a depthwise conv holds few parameters and would
        become a sequential chain of T depthwise steps.

    Outcome:
      steps: T (>= 1) for the matched convs. T = 1 gives a ``CSRConv`` that equals the conv
        (useful to check a conversion: copy the weights with :func:`transfer_weights`).
      keep: matched convs stay ordinary (leave ``steps`` out); put such a rule first to carve an
        exception out of a broader rule below it.
      only_if_smaller: replace a matched conv only where the CSR layer has fewer parameters (a
        1x1 conv widening C -> rC costs (1 + r)/T^2 of the conv under CSR); the rule still
        counts as having decided the conv.
      use_conv_init: initialise the CSR kernels/biases with the conv's own initializers instead
        of the reference's U(+-1/sqrt(fan_in)) (both adapt to the smaller CSR kernel shapes).
    """

    steps: int | None = None
    include: str | None = None
    exclude: str | None = None
    kernel_sizes: Any = None
    min_in_channels: int = 1
    min_out_channels: int = 1
    depthwise: bool = False
    keep: bool = False
    only_if_smaller: bool = False
    use_conv_init: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.keep, bool):
            raise SurgeryError(f"ConvRule.keep must be a bool, got {self.keep!r}.")
        if self.keep:
            if self.steps is not None:
                raise SurgeryError("ConvRule(keep=True) keeps convs ordinary; leave steps out (None).")
        elif self.steps is None:
            raise SurgeryError(
                "ConvRule needs steps (the number of CSR steps T >= 1), e.g. ConvRule(3, include='block'), "
                "or keep=True to keep the matched convs ordinary."
            )
        else:
            _check_int(self.steps, "ConvRule.steps (the number of CSR steps T)", 1)
        _check_regex(self.include, "ConvRule.include")
        _check_regex(self.exclude, "ConvRule.exclude")
        object.__setattr__(self, "kernel_sizes", _kernel_sizes(self.kernel_sizes))
        _check_int(self.min_in_channels, "ConvRule.min_in_channels", 1)
        _check_int(self.min_out_channels, "ConvRule.min_out_channels", 1)
        for name in ("depthwise", "only_if_smaller", "use_conv_init"):
            if not isinstance(getattr(self, name), bool):
                raise SurgeryError(f"ConvRule.{name} must be a bool, got {getattr(self, name)!r}.")

    def mismatch(self, path: str, c_in: int, c_out: int, kernel: tuple[int, ...], depthwise: bool) -> str | None:
        """Why this rule does not match the conv, or None if it does."""
        if self.include is not None and re.search(self.include, path) is None:
            return f"path not matched by include={self.include!r}"
        if self.exclude is not None and re.search(self.exclude, path) is not None:
            return f"path matched by exclude={self.exclude!r}"
        if self.kernel_sizes is not None and tuple(kernel) not in self.kernel_sizes:
            sizes = ", ".join(f"{a}x{b}" for a, b in self.kernel_sizes)
            return f"kernel {_fmt_kernel(kernel)} not in ({sizes})"
        if c_in < self.min_in_channels:
            return f"C_in={c_in} < min_in_channels={self.min_in_channels}"
        if c_out < self.min_out_channels:
            return f"C_out={c_out} < min_out_channels={self.min_out_channels}"
        if depthwise and not self.depthwise:
            return "depthwise conv (rule has depthwise=False)"
        return None

    def describe(self) -> str:
        """The fields that differ from their defaults, as a constructor call."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"ConvRule({', '.join(parts)})"


def _from_policy_rule(rule: Any) -> ConvRule:
    """Translates a ``csr_jax.policy.Rule`` (this project's backbone policies) to a ``ConvRule``.

    Roles and block indices are tags that this project's backbones attach to their convs; a
    foreign model has none, so a rule using them cannot be applied here.
    """
    if getattr(rule, "roles", None) is not None or getattr(rule, "blocks", None) is not None:
        raise SurgeryError(
            f"Policy rule {rule!r} selects by roles/blocks, which only this project's backbones "
            "define; for another model select convs by module path, e.g. ConvRule(3, include='block')."
        )
    steps = rule.steps
    return ConvRule(
        steps=None if steps == 1 else steps,  # in a policy, T = 1 means "keep the conv ordinary"
        keep=steps == 1,
        include=rule.path,
        min_in_channels=rule.min_channels,
        min_out_channels=rule.min_channels,
        depthwise=True,  # a policy rule without roles matches depthwise convs too
        only_if_smaller=bool(getattr(rule, "only_if_smaller", False)),
    )


def _coerce_rules(rules: Any) -> tuple[ConvRule, ...]:
    if isinstance(rules, ConvRule):
        return (rules,)
    policy_types = _policy_types()
    if policy_types and isinstance(rules, policy_types[1]):
        rules = rules.rules
    if policy_types and isinstance(rules, policy_types[0]):
        return (_from_policy_rule(rules),)
    if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Sequence):
        raise SurgeryError(
            f"rules must be a ConvRule or a sequence of ConvRule, got {type(rules).__name__}; "
            "e.g. [ConvRule(2, kernel_sizes=3), ConvRule(4, kernel_sizes=1, min_in_channels=32)]."
        )
    if not rules:
        raise SurgeryError("rules is empty; give at least one ConvRule (without rules the model is unchanged).")
    out = []
    for i, rule in enumerate(rules):
        if isinstance(rule, ConvRule):
            out.append(rule)
        elif policy_types and isinstance(rule, policy_types[0]):
            out.append(_from_policy_rule(rule))
        else:
            raise SurgeryError(f"rules[{i}] is a {type(rule).__name__}, not a ConvRule: {rule!r}.")
    return tuple(out)


def _policy_types() -> tuple[type, type] | None:
    """``(Rule, CSRPolicy)`` from ``csr_jax.policy`` if that module is available."""
    try:
        from csr_jax import policy
    except ImportError:
        return None
    rule_t, policy_t = getattr(policy, "Rule", None), getattr(policy, "CSRPolicy", None)
    if isinstance(rule_t, type) and isinstance(policy_t, type):
        return rule_t, policy_t
    return None


# ------------------------------------------------------------------------------------------------
# The per-conv decision


def _fmt_kernel(kernel: Sequence[int]) -> str:
    return "x".join(str(k) for k in kernel)


def _as_tuple(value: Any, rank: int) -> tuple[int, ...]:
    """Flax's broadcast of ``strides``/dilations: None means 1, an int is repeated."""
    if value is None:
        value = 1
    if isinstance(value, int):
        return (value,) * rank
    return tuple(int(v) for v in value)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the interceptor does with one conv call, and everything the report says about it."""

    path: str
    scope_path: tuple[str, ...]
    layer: str
    c_in: int
    c_out: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    groups: int
    depthwise: bool
    use_bias: bool
    status: str
    reason: str
    rule: int | None
    steps: int | None
    padding: Any = None  # CSRConv padding when converted


def _unsupported_reason(module: nn.Module, x_shape: tuple[int, ...], kernel: tuple[int, ...], steps: int,
                        depthwise: bool) -> str | None:
    """Why ``CSRConv(steps)`` cannot compute this conv's function, or None if it can."""
    if isinstance(module, nn.ConvTranspose):
        return "nn.ConvTranspose (CSR-Conv has no transposed form)"
    if isinstance(module, nn.ConvLocal):
        return "nn.ConvLocal (unshared weights per pixel)"
    if type(module).__call__ is not nn.Conv.__call__:
        return f"{type(module).__name__} overrides nn.Conv.__call__ (its function is unknown)"
    if len(kernel) != 2:
        return f"{len(kernel)}-D conv (CSRConv is 2-D)"
    if len(x_shape) < 3:
        return f"input of rank {len(x_shape)} (a 2-D conv needs (..., H, W, C))"
    c_in, groups = x_shape[-1], module.feature_group_count
    if groups != 1 and not depthwise:
        return (f"grouped conv (feature_group_count={groups}, C_in={c_in}, C_out={module.features}); "
                "only depthwise convs (groups == C_in == C_out) have a CSR form")
    if any(d != 1 for d in _as_tuple(module.input_dilation, 2)):
        return f"input dilation {module.input_dilation}"
    if any(d != 1 for d in _as_tuple(module.kernel_dilation, 2)):
        return f"kernel dilation {module.kernel_dilation}"
    if isinstance(module.padding, str) and module.padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
        return f"padding {module.padding!r}"
    if module.mask is not None:
        return "masked kernel (mask is set)"
    if module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None:
        return "custom conv_general_dilated"
    if module.promote_dtype is not _default_promote_dtype:
        return "custom promote_dtype"
    if steps > 1 and any(k % 2 == 0 for k in kernel):
        return f"even kernel {_fmt_kernel(kernel)} with T={steps} (the hidden conv needs an odd kernel)"
    limit = min(c_in, module.features)
    if steps > limit:
        return f"T={steps} exceeds min(C_in, C_out)={limit} (every step needs a channel)"
    return None


def _csr_padding(module: nn.Conv, x_shape: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int]) -> Any:
    """The conv's padding in a form ``CSRConv`` accepts, meaning exactly the same pads."""
    padding = module.padding
    if isinstance(padding, str):
        upper = padding.upper()
        if upper in ("SAME", "VALID"):
            return upper
        pads = jax.lax.padtype_to_pads(x_shape[-3:-1], kernel, strides, upper)
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = []
    for p in padding:
        pads.append((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])))
    return tuple(pads)


def _plan(module: nn.Module, x_shape: tuple[int, ...], rules: tuple[ConvRule, ...], root: tuple[str, ...]) -> _Plan:
    # Paths are relative to the converted model, wherever it sits in a larger one.
    scope_path = tuple(str(p) for p in module.path)
    if scope_path[: len(root)] == root:
        scope_path = scope_path[len(root):]
    path = "/".join(scope_path)
    ks = module.kernel_size
    kernel = (ks,) if isinstance(ks, int) else tuple(int(k) for k in ks)
    c_in, c_out = int(x_shape[-1]), int(module.features)
    groups = int(getattr(module, "feature_group_count", 1))
    depthwise = groups > 1 and groups == c_in == c_out
    strides = _as_tuple(module.strides, len(kernel))
    base = dict(path=path, scope_path=scope_path, layer=type(module).__name__, c_in=c_in, c_out=c_out,
                kernel_size=kernel, strides=strides, groups=groups, depthwise=depthwise,
                use_bias=bool(module.use_bias))

    misses = []
    for index, rule in enumerate(rules):
        miss = rule.mismatch(path, c_in, c_out, kernel, depthwise)
        if miss is not None:
            misses.append(f"rule {index}: {miss}")
            continue
        if rule.keep:
            return _Plan(**base, status=KEPT, reason=f"kept by rule {index}", rule=index, steps=None)
        reason = _unsupported_reason(module, x_shape, kernel, rule.steps, depthwise)
        if reason is not None:
            return _Plan(**base, status=UNSUPPORTED, reason=reason, rule=index, steps=rule.steps)
        if rule.only_if_smaller:
            before = conv_params(c_in, c_out, kernel, use_bias=module.use_bias, groups=groups)
            after = csr_conv_params(c_in, c_out, kernel, rule.steps, use_bias=module.use_bias, depthwise=depthwise)
            if after >= before:
                return _Plan(**base, status=NOT_SMALLER, rule=index, steps=rule.steps,
                             reason=f"CSR with T={rule.steps} has {after:,} params, the conv {before:,}")
        padding = _csr_padding(module, x_shape, kernel, strides)  # type: ignore[arg-type]
        return _Plan(**base, status=CONVERTED, reason="", rule=index, steps=rule.steps, padding=padding)
    return _Plan(**base, status=UNMATCHED, reason="; ".join(misses), rule=None, steps=None)


def _apply_csr(module: nn.Conv, plan: _Plan, rule: ConvRule, x: jax.Array) -> jax.Array:
    """Runs a ``CSRConv`` in the conv's own scope, so its parameters sit at the conv's path."""
    extra = {}
    if rule.use_conv_init:
        extra = dict(kernel_init=module.kernel_init, bias_init=module.bias_init)
    layer = CSRConv(
        features=module.features,
        kernel_size=plan.kernel_size,
        steps=plan.steps,
        strides=plan.strides,
        padding=plan.padding,
        use_bias=module.use_bias,
        depthwise=plan.depthwise,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
        parent=module.scope,
        **extra,
    )
    # nn.Conv accepts any number of leading batch axes (or none); CSRConv wants exactly one.
    batch_shape = x.shape[:-3]
    y = layer(x.reshape((-1,) + x.shape[-3:]))
    return y.reshape(batch_shape + y.shape[1:])


# ------------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass(frozen=True)
class ConvRecord:
    """One conv layer of the model and what the surgery did with it.

    ``status`` is ``'converted'``, ``'unmatched'`` (no rule selected it), ``'kept'`` (a keep rule
    selected it), ``'unsupported'`` (a rule selected it but CSRConv cannot represent it; ``reason``
    says why) or ``'not_smaller'`` (an ``only_if_smaller`` rule found CSR no smaller). Parameter
    counts are per layer; MACs per image (None where no closed form applies: ``nn.ConvTranspose``).
    ``steps`` is T of the rule that decided the layer (None if none). ``calls`` counts the calls
    of a layer used more than once (its parameters are counted once).
    """

    path: str
    scope_path: tuple[str, ...]
    layer: str
    status: str
    reason: str
    rule: int | None
    steps: int | None
    c_in: int
    c_out: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    groups: int
    depthwise: bool
    use_bias: bool
    out_hw: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    calls: int = 1

    @property
    def converted(self) -> bool:
        return self.status == CONVERTED


def _module_param_count(module: nn.Module) -> int:
    """Parameters a (non-converted) layer created, read from its own scope."""
    params = module.variables.get("params", {})
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))


def _record(plan: _Plan, module: nn.Module, y: Any) -> ConvRecord:
    out_spatial = tuple(int(d) for d in y.shape[-1 - len(plan.kernel_size):-1])
    k, c_in, c_out = plan.kernel_size, plan.c_in, plan.c_out
    ordinary_2d = isinstance(module, nn.Conv) and type(module).__call__ is nn.Conv.__call__ and len(k) == 2
    if ordinary_2d:
        before = conv_params(c_in, c_out, k, use_bias=plan.use_bias, groups=plan.groups)
        macs_before = conv_macs(c_in, c_out, k, out_spatial, groups=plan.groups)
    else:
        before = _module_param_count(module)
        macs_before = None
        if not isinstance(module, nn.ConvTranspose):
            # Shared or unshared weights, any rank: every output pixel costs prod(k) * C_in/g * C_out.
            macs_before = math.prod(k) * (c_in // plan.groups) * c_out * math.prod(out_spatial)
    after, macs_after = before, macs_before
    if plan.status == CONVERTED:
        after = csr_conv_params(c_in, c_out, k, plan.steps, use_bias=plan.use_bias, depthwise=plan.depthwise)
        macs_after = csr_conv_macs(c_in, c_out, k, plan.steps, out_spatial, depthwise=plan.depthwise)
    return ConvRecord(
        path=plan.path, scope_path=plan.scope_path, layer=plan.layer, status=plan.status, reason=plan.reason,
        rule=plan.rule, steps=plan.steps, c_in=c_in, c_out=c_out, kernel_size=k, strides=plan.strides,
        groups=plan.groups, depthwise=plan.depthwise, use_bias=plan.use_bias, out_hw=out_spatial,
        params_before=before, params_after=after, macs_before=macs_before, macs_after=macs_after,
    )


@dataclasses.dataclass(frozen=True)
class SurgeryReport:
    """What :func:`convert` replaced. ``str(report)`` is a table with totals.

    ``records`` lists every conv layer in call order, converted or not. ``model_params_before`` /
    ``model_params_after`` count the whole ``params`` collection of the original and the
    converted model (BatchNorm statistics excluded), so they include dense heads and norms.
    ``unused_rules`` are the indices of rules that decided no conv (only non-empty when
    ``convert(..., allow_unused_rules=True)``).
    """

    records: tuple[ConvRecord, ...]
    rules: tuple[ConvRule, ...]
    model_params_before: int
    model_params_after: int
    unused_rules: tuple[int, ...]

    @property
    def converted(self) -> tuple[ConvRecord, ...]:
        return tuple(r for r in self.records if r.status == CONVERTED)

    @property
    def not_converted(self) -> tuple[ConvRecord, ...]:
        return tuple(r for r in self.records if r.status != CONVERTED)

    def __getitem__(self, path: str) -> ConvRecord:
        """The record of the conv at ``path`` ('a/b/Conv_0')."""
        for r in self.records:
            if r.path == path:
                return r
        raise KeyError(f"No conv at {path!r}; convs: {[r.path for r in self.records]}.")

    @property
    def conv_params_before(self) -> int:
        return sum(r.params_before for r in self.records)

    @property
    def conv_params_after(self) -> int:
        return sum(r.params_after for r in self.records)

    @property
    def conv_macs_before(self) -> int:
        return sum(r.macs_before or 0 for r in self.records)

    @property
    def conv_macs_after(self) -> int:
        return sum(r.macs_after or 0 for r in self.records)

    def __str__(self) -> str:
        header = (f"{'conv':<36} {'layer':<13} {'in':>5} {'out':>5} {'k':>5} {'s':>3} {'T':>2} "
                  f"{'params':>11} {'-> CSR':>11} {'MACs/img':>13} {'-> CSR':>13}  status")
        rule_line = "-" * len(header)
        lines = [header, rule_line]

        def num(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"

        for r in self.records:
            steps = "" if r.steps is None or r.status != CONVERTED else str(r.steps)
            status = r.status + (f" ({r.reason})" if r.reason and r.status != UNMATCHED else "")
            if r.status == UNMATCHED:
                status += " (no rule matched)"
            if r.depthwise:
                layer = f"{r.layer} dw"
            elif r.groups > 1:
                layer = f"{r.layer} g{r.groups}"
            else:
                layer = r.layer
            lines.append(
                f"{(r.path or '<root>')[-36:]:<36} {layer:<13} {r.c_in:>5} {r.c_out:>5} "
                f"{_fmt_kernel(r.kernel_size):>5} {_fmt_kernel(r.strides):>3} {steps:>2} "
                f"{num(r.params_before):>11} {num(r.params_after):>11} {num(r.macs_before):>13} "
                f"{num(r.macs_after):>13}  {status}"
            )
        lines.append(rule_line)
        lines.append(
            f"{'convs':<36} {'':<13} {'':>5} {'':>5} {'':>5} {'':>3} {'':>2} {num(self.conv_params_before):>11} "
            f"{num(self.conv_params_after):>11} {num(self.conv_macs_before):>13} {num(self.conv_macs_after):>13}"
        )
        ratio = self.model_params_after / self.model_params_before if self.model_params_before else float("nan")
        lines.append(
            f"{len(self.converted)} of {len(self.records)} convs converted; model params "
            f"{self.model_params_before:,} -> {self.model_params_after:,} ({ratio:.3f}x)."
        )
        for i, rule in enumerate(self.rules):
            used = sum(1 for r in self.records if r.rule == i)
            done = sum(1 for r in self.records if r.rule == i and r.status == CONVERTED)
            lines.append(f"rule {i}: {rule.describe()} decided {used} conv(s), converted {done}"
                         + (" [UNUSED]" if i in self.unused_rules else ""))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The converted module

# While set (by ``convert``), the interceptor records one ConvRecord per conv path in it.
_RECORDER: contextvars.ContextVar[dict[str, ConvRecord] | None] = contextvars.ContextVar(
    "csr_surgery_recorder", default=None)


def _make_interceptor(rules: tuple[ConvRule, ...], root: tuple[str, ...]) -> Callable[..., Any]:
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, _CONV_TYPES):
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["inputs"]
        plan = _plan(module, tuple(x.shape), rules, root)
        if plan.status == CONVERTED:
            y = _apply_csr(module, plan, rules[plan.rule], x)  # type: ignore[index]
        else:
            y = next_fun(*args, **kwargs)
        recorder = _RECORDER.get()
        if recorder is not None:
            if plan.path in recorder:
                recorder[plan.path] = dataclasses.replace(recorder[plan.path], calls=recorder[plan.path].calls + 1)
            else:
                recorder[plan.path] = _record(plan, module, y)
        return y

    return interceptor


class CSRConverted(nn.Module):
    """``model`` with the convs that ``rules`` select computed as ``CSRConv``; made by :func:`convert`.

    It shares ``model``'s root scope, so its variables have the model's layout, and forwards
    every method of ``model``: ``converted.apply(v, x, method='encode')`` runs ``model.encode``
    converted. (Pass methods by name or as ``converted.encode``, not as ``ModelClass.encode``,
    which would run the original class's code on the wrapper.)
    """

    model: nn.Module
    rules: tuple[ConvRule, ...]

    def setup(self) -> None:
        nn.share_scope(self, self.model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls ``model(*args, **kwargs)`` with the selected convs replaced."""
        return self._csr_run("__call__", args, kwargs)

    def _csr_run(self, method_name: str, args: tuple, kwargs: dict) -> Any:
        if self.scope is None:
            raise SurgeryError(
                "A CSRConverted model is called like any linen module: through converted.init / "
                "converted.apply, or as a submodule (a field of, or created inside, another module)."
            )
        root = tuple(str(p) for p in self.scope.path)
        with nn.intercept_methods(_make_interceptor(self.rules, root)):
            return getattr(self.model, method_name)(*args, **kwargs)

    @nn.nowrap
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("model")
            if name.startswith("_") or model is None or not hasattr(type(model), name):
                raise
            if not callable(getattr(type(model), name)):
                return getattr(model, name)  # a field or property of the model, e.g. num_classes

            def forward(self_: CSRConverted, *args: Any, **kwargs: Any) -> Any:
                return self_._csr_run(name, args, kwargs)

            forward.__name__ = name
            return types.MethodType(forward, self)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _eval_init(model: nn.Module, rngs: Any, args: tuple, kwargs: dict) -> Any:
    """Abstract ``model.init``: arrays become shapes, everything else (``train=False``) stays static."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    arrays = [leaf for leaf in leaves if _is_array(leaf)]

    def init(array_leaves):
        it = iter(array_leaves)
        a, kw = jax.tree_util.tree_unflatten(treedef, [next(it) if _is_array(leaf) else leaf for leaf in leaves])
        return model.init(rngs, *a, **kw)

    return jax.eval_shape(init, arrays)


def convert(
    model: nn.Module,
    rules: ConvRule | Sequence[ConvRule] | Any,
    *example_args: Any,
    allow_unused_rules: bool = False,
    init_rngs: Mapping[str, jax.Array] | None = None,
    **example_kwargs: Any,
) -> tuple[CSRConverted, SurgeryReport]:
    """Converts ``model``'s convs that ``rules`` select into ``CSRConv``, without editing its code.

    Args:
      model: any unbound ``flax.linen`` module.
      rules: a :class:`ConvRule`, a sequence of them (first match wins), or a
        ``csr_jax.policy`` ``Rule``/``CSRPolicy`` that selects by path only.
      *example_args, **example_kwargs: a call of ``model`` (arrays or ``jax.ShapeDtypeStruct``),
        e.g. ``x, train=False``; only shapes are used (one abstract ``init`` of each model).
      allow_unused_rules: list rules that decide no conv in ``report.unused_rules`` instead of
        raising ``SurgeryError``.
      init_rngs: rng streams for the abstract init (default: 'params' and 'dropout').

    Returns:
      ``(converted, report)``: ``converted`` is a ``CSRConverted`` to ``init``/``apply`` like
      ``model`` (same call signature; fresh variables come from ``converted.init``, weights for
      T = 1 from :func:`transfer_weights`), ``report`` a :class:`SurgeryReport`.
    """
    if not isinstance(model, nn.Module):
        raise SurgeryError(f"convert needs a flax.linen Module, got {type(model).__name__}.")
    if model.scope is not None:
        raise SurgeryError("convert needs an unbound module (the one you call .init/.apply on), not a bound one.")
    rule_tuple = _coerce_rules(rules)
    converted = CSRConverted(model=model, rules=rule_tuple)
    rngs = dict(init_rngs) if init_rngs is not None else {"params": jax.random.key(0), "dropout": jax.random.key(1)}

    before = _eval_init(model, rngs, example_args, example_kwargs)
    recorder: dict[str, ConvRecord] = {}
    token = _RECORDER.set(recorder)
    try:
        after = _eval_init(converted, rngs, example_args, example_kwargs)
    finally:
        _RECORDER.reset(token)

    records = tuple(recorder.values())
    used = {r.rule for r in records if r.rule is not None}
    unused = tuple(i for i in range(len(rule_tuple)) if i not in used)
    if unused and not allow_unused_rules:
        lines = [f"  rule {i}: {rule_tuple[i].describe()}" for i in unused]
        if records:
            seen = "\n".join(
                f"  {r.path or '<root>'}: {r.layer} {r.c_in}->{r.c_out} {_fmt_kernel(r.kernel_size)}"
                + (f", groups={r.groups}" if r.groups > 1 else "")
                + (f" (decided by rule {r.rule})" if r.rule is not None else "")
                for r in records[:12]
            )
            more = f"\n  ... and {len(records) - 12} more" if len(records) > 12 else ""
        else:
            seen, more = "  (none: the model called no nn.Conv/ConvLocal/ConvTranspose)", ""
        raise SurgeryError(
            "These rule(s) decide no conv of the model (a regex or size that matches nothing, or "
            "only convs an earlier rule already decided):\n" + "\n".join(lines)
            + f"\nThe model's convs:\n{seen}{more}\n"
            "Fix the rule, or pass allow_unused_rules=True to list it in the report instead."
        )
    report = SurgeryReport(
        records=records,
        rules=rule_tuple,
        model_params_before=count_params(before),
        model_params_after=count_params(after),
        unused_rules=unused,
    )
    return converted, report


# ------------------------------------------------------------------------------------------------
# Weights


def _get(tree: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(tree, Mapping) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _shape(value: Any) -> tuple[int, ...]:
    """Shape of an array or of a ``jax.ShapeDtypeStruct`` (abstract variables work too)."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(np.shape(value))


def transfer_weights(original_variables: Mapping[str, Any], converted_variables: Mapping[str, Any],
                     report: SurgeryReport) -> dict[str, Any]:
    """Copies the original model's weights into the converted model's variables.

    Every variable that is not part of a converted conv (other layers, norms, BatchNorm
    statistics, unconverted convs) is copied as is. A conv converted with T = 1 gets
    ``input_kernel <- kernel`` and ``input_bias <- bias``: a T = 1 ``CSRConv`` is that conv, so a
    model converted with T = 1 everywhere then gives the original model's outputs. Convs
    converted with T > 1 keep the values in ``converted_variables`` (their weights have no
    counterpart in an ordinary conv), so start from ``converted.init(...)`` and fine-tune.

    Returns a new nested dict; raises ``SurgeryError`` when a variable's shape or path does not
    line up (variables of another model, or of a different conversion than ``report``'s).
    """
    original = unfreeze(original_variables) if not isinstance(original_variables, dict) else original_variables
    result = jax.tree_util.tree_map(lambda a: a, unfreeze(converted_variables))  # fresh containers
    converted = {r.scope_path: r for r in report.converted}

    def put(keys: tuple[str, ...], value: Any, what: str) -> None:
        target = _get(result, keys[:-1])
        if not isinstance(target, dict) or keys[-1] not in target:
            raise SurgeryError(
                f"transfer_weights: the converted variables have no {'/'.join(keys)} for {what}; "
                "pass variables of the model that convert() returned with this report."
            )
        if _shape(target[keys[-1]]) != _shape(value):
            raise SurgeryError(
                f"transfer_weights: shape mismatch at {'/'.join(keys)}: original {_shape(value)}, converted "
                f"{_shape(target[keys[-1]])}; the variables come from different models or inputs."
            )
        target[keys[-1]] = value

    leaves = jax.tree_util.tree_flatten_with_path(original)[0]
    for key_path, value in leaves:
        keys = tuple(str(getattr(k, "key", k)) for k in key_path)
        collection, inner = keys[0], keys[1:]
        record = converted.get(inner[:-1]) if collection == "params" else None
        if record is None:
            put(keys, value, "the original variable")
        elif record.steps == 1:
            mapped = {"kernel": "input_kernel", "bias": "input_bias"}.get(inner[-1])
            if mapped is None:
                raise SurgeryError(f"transfer_weights: unexpected variable {'/'.join(keys)} in converted conv.")
            put((collection, *inner[:-1], mapped), value, f"conv {record.path}")
        # Converted with T > 1: nothing to copy.
    return result
