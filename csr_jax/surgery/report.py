"""What a conversion did, conv by conv: :class:`ConvRecord` and :class:`SurgeryReport`.

Records are built from the conversion's :func:`csr_jax.policy.recording` (one entry per conv
call: its site and decision) and the original model's abstract variables; parameter and MAC
counts come from the closed forms in :mod:`csr_jax.accounting`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from csr_jax.accounting import count_params, csr_conv_macs, csr_conv_params
from csr_jax.policy import CSR, UNMATCHED, ConvSite, CSRPolicy, Decision

__all__ = ["CONVERTED", "ConvRecord", "SurgeryReport", "build_records"]

#: ``ConvRecord.status`` of a replaced conv; the other statuses are the decision's.
CONVERTED = "converted"


@dataclasses.dataclass(frozen=True)
class ConvRecord:
    """One conv layer of the model and what the surgery did with it.

    ``site`` is the conv as the policy saw it, ``decision`` what the policy (and the check for
    convs CSRConv cannot represent) decided. ``status`` is ``'converted'``, ``'unmatched'`` (no
    rule selected it), ``'kept'`` (a T = 1 rule selected it), ``'unsupported'`` (a rule selected
    it but CSRConv cannot represent it; ``reason`` says why) or ``'not_smaller'`` (an
    ``only_if_smaller`` rule found CSR no smaller). Parameter counts are per layer; MACs per image
    (None where no closed form applies: ``nn.ConvTranspose``). ``calls`` counts the calls of a
    layer used more than once (its parameters are counted once).
    """

    site: ConvSite
    decision: Decision
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    calls: int = 1

    @property
    def status(self) -> str:
        return CONVERTED if self.decision.status == CSR else self.decision.status

    @property
    def converted(self) -> bool:
        return self.decision.status == CSR

    path = property(lambda self: self.site.path)
    scope_path = property(lambda self: tuple(self.site.path.split("/")) if self.site.path else ())
    layer = property(lambda self: self.site.layer)
    c_in = property(lambda self: self.site.in_channels)
    c_out = property(lambda self: self.site.out_channels)
    kernel_size = property(lambda self: self.site.kernel_size)
    strides = property(lambda self: self.site.strides)
    groups = property(lambda self: self.site.groups)
    depthwise = property(lambda self: self.site.depthwise)
    use_bias = property(lambda self: self.site.use_bias)
    out_hw = property(lambda self: self.site.out_hw)
    reason = property(lambda self: self.decision.reason)
    rule = property(lambda self: self.decision.rule)
    steps = property(lambda self: self.decision.steps)


def _subtree(tree: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(tree, Mapping) or k not in tree:
            return {}
        tree = tree[k]
    return tree


def build_records(
    calls: Sequence[tuple[ConvSite, Decision]], original_variables: Mapping[str, Any]
) -> tuple[ConvRecord, ...]:
    """One record per conv layer (in first-call order) from a conversion's recorded calls."""
    first: dict[str, tuple[ConvSite, Decision]] = {}
    count: dict[str, int] = {}
    for site, decision in calls:
        first.setdefault(site.path, (site, decision))
        count[site.path] = count.get(site.path, 0) + 1
    params = original_variables.get("params", {})
    records = []
    for path, (site, decision) in first.items():
        before = count_params(_subtree(params, path.split("/") if path else ()))
        k, c_in, c_out = site.kernel_size, site.in_channels, site.out_channels
        macs_before = None
        if site.layer != "ConvTranspose":
            # Shared or unshared weights, any rank: every output pixel costs prod(k) * C_in/g * C_out.
            macs_before = math.prod(k) * (c_in // site.groups) * c_out * math.prod(site.out_hw)
        after, macs_after = before, macs_before
        if decision.status == CSR:
            after = csr_conv_params(
                c_in, c_out, k, decision.steps, use_bias=site.use_bias, depthwise=site.depthwise
            )
            macs_after = csr_conv_macs(
                c_in, c_out, k, decision.steps, site.out_hw, depthwise=site.depthwise
            )
        records.append(
            ConvRecord(site, decision, before, after, macs_before, macs_after, count[path])
        )
    return tuple(records)


@dataclasses.dataclass(frozen=True)
class SurgeryReport:
    """What :func:`csr_jax.surgery.convert` replaced. ``str(report)`` is a table with totals.

    ``records`` lists every conv layer in call order, converted or not. ``model_params_before`` /
    ``model_params_after`` count the whole ``params`` collection of the original and the
    converted model (BatchNorm statistics excluded), so they include dense heads and norms.
    ``unused_rules`` are the indices of rules that decided no conv (only non-empty when
    ``convert(..., allow_unused_rules=True)``).
    """

    records: tuple[ConvRecord, ...]
    policy: CSRPolicy
    model_params_before: int
    model_params_after: int
    unused_rules: tuple[int, ...]

    @property
    def rules(self) -> tuple[Any, ...]:
        return self.policy.rules

    @property
    def converted(self) -> tuple[ConvRecord, ...]:
        return tuple(r for r in self.records if r.converted)

    @property
    def not_converted(self) -> tuple[ConvRecord, ...]:
        return tuple(r for r in self.records if not r.converted)

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
        header = (
            f"{'conv':<36} {'layer':<13} {'in':>5} {'out':>5} {'k':>5} {'s':>3} {'T':>2} "
            f"{'params':>11} {'-> CSR':>11} {'MACs/img':>13} {'-> CSR':>13}  status"
        )
        rule_line = "-" * len(header)
        lines = [header, rule_line]

        def num(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"

        def fmt(t: Sequence[int]) -> str:
            return "x".join(map(str, t))

        for r in self.records:
            steps = str(r.steps) if r.converted else ""
            status = r.status + (f" ({r.reason})" if r.reason and r.status != UNMATCHED else "")
            if r.status == UNMATCHED:
                status += " (no rule matched)"
            layer = (
                f"{r.layer} dw"
                if r.depthwise
                else f"{r.layer} g{r.groups}"
                if r.groups > 1
                else r.layer
            )
            lines.append(
                f"{(r.path or '<root>')[-36:]:<36} {layer:<13} {r.c_in:>5} {r.c_out:>5} "
                f"{fmt(r.kernel_size):>5} {fmt(r.strides):>3} {steps:>2} "
                f"{num(r.params_before):>11} {num(r.params_after):>11} {num(r.macs_before):>13} "
                f"{num(r.macs_after):>13}  {status}"
            )
        lines.append(rule_line)
        lines.append(
            f"{'convs':<36} {'':<13} {'':>5} {'':>5} {'':>5} {'':>3} {'':>2} {num(self.conv_params_before):>11} "
            f"{num(self.conv_params_after):>11} {num(self.conv_macs_before):>13} {num(self.conv_macs_after):>13}"
        )
        ratio = (
            self.model_params_after / self.model_params_before
            if self.model_params_before
            else float("nan")
        )
        lines.append(
            f"{len(self.converted)} of {len(self.records)} convs converted; model params "
            f"{self.model_params_before:,} -> {self.model_params_after:,} ({ratio:.3f}x)."
        )
        for i, rule in enumerate(self.rules):
            used = sum(1 for r in self.records if r.rule == i)
            done = sum(1 for r in self.records if r.rule == i and r.converted)
            lines.append(
                f"rule {i}: {rule.describe()} decided {used} conv(s), converted {done}"
                + (" [UNUSED]" if i in self.unused_rules else "")
            )
        return "\n".join(lines)
