"""CSR surgery: turn the ``nn.Conv`` layers of any ``flax.linen`` model into ``CSRConv``.

The models this is for are ones this project did not write, so their code cannot be edited. The
conversion therefore happens at call time: :func:`convert` wraps the model in
:class:`CSRConverted`, whose methods run the original model under an ``nn.intercept_methods``
interceptor that computes the convs the policy selects as ``CSRConv`` in the conv's own scope.
The wrapper is an ordinary linen module: ``init``, ``apply``, ``jax.jit``,
``mutable=['batch_stats']``, rng streams and the model's other methods all work as before.

Which convs become CSR is said in the one rule language of :mod:`csr_jax.policy`: the same
``CSRPolicy`` that ``csr_jax.models.create(name, csr=policy)`` takes. A foreign model's convs
have no roles or blocks, so its rules select by module path (``path``, ``exclude``), kernel size,
channels and groups. A conv the policy selects but ``CSRConv`` cannot represent stays ordinary and
is listed in the report with the reason; a rule that decides no conv raises
:class:`~csr_jax.policy.PolicyError` unless ``allow_unused_rules=True``.

Modules: ``planning`` (the per-conv decision and what CSRConv cannot do), ``wrapper`` (the
converted module), ``report`` (what was replaced, with counts), ``weights`` (weight transfer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import linen as nn

from csr_jax.accounting import count_params
from csr_jax.conv_sites import abstract_init
from csr_jax.policy import CSRPolicy, PolicyError, Rule, check_coverage, recording, unused_rules
from csr_jax.surgery.errors import SurgeryError
from csr_jax.surgery.report import ConvRecord, SurgeryReport, build_records
from csr_jax.surgery.weights import transfer_weights
from csr_jax.surgery.wrapper import CSRConverted

__all__ = [
    "ConvRecord",
    "CSRConverted",
    "SurgeryError",
    "SurgeryReport",
    "convert",
    "transfer_weights",
]


def _as_policy(policy: Any) -> CSRPolicy:
    if isinstance(policy, CSRPolicy):
        return policy
    if isinstance(policy, Rule):
        return CSRPolicy(rules=(policy,))
    if isinstance(policy, Mapping):
        return CSRPolicy.from_dict(policy)
    if isinstance(policy, (list, tuple)) and policy:
        return CSRPolicy(rules=tuple(policy))
    raise PolicyError(
        f"convert takes a csr_jax.policy.CSRPolicy (or a Rule, a list of Rules, or the policy's dict), "
        f"got {type(policy).__name__}; e.g. CSRPolicy(rules=(Rule(3, kernel_sizes=1), Rule(2, kernel_sizes=3)))."
    )


def convert(
    model: nn.Module,
    policy: CSRPolicy | Rule | Any,
    *example_args: Any,
    allow_unused_rules: bool = False,
    t1_as_csr: bool = False,
    init_rngs: Mapping[str, jax.Array] | None = None,
    **example_kwargs: Any,
) -> tuple[CSRConverted, SurgeryReport]:
    """Converts ``model``'s convs that ``policy`` selects into ``CSRConv``, without editing its code.

    Args:
      model: any unbound ``flax.linen`` module.
      policy: a :class:`~csr_jax.policy.CSRPolicy` (first matching rule wins); a single
        :class:`~csr_jax.policy.Rule`, a list of them or the policy's dict form are accepted too.
      *example_args, **example_kwargs: a call of ``model`` (arrays or ``jax.ShapeDtypeStruct``),
        e.g. ``x, train=False``; only shapes are used (one abstract ``init`` of each model).
      allow_unused_rules: list rules that decide no conv in ``report.unused_rules`` instead of
        raising ``PolicyError``.
      t1_as_csr: a rule with T = 1 builds a one-step ``CSRConv`` (the conv itself, weights
        renamed) instead of keeping the conv: with :func:`transfer_weights` the converted model
        then reproduces the original, which checks a conversion end to end.
      init_rngs: rng streams for the abstract init (default: 'params' and 'dropout').

    Returns:
      ``(converted, report)``: ``converted`` is a ``CSRConverted`` to ``init``/``apply`` like
      ``model`` (same call signature; fresh variables come from ``converted.init``), ``report``
      a :class:`SurgeryReport`.
    """
    if not isinstance(model, nn.Module):
        raise SurgeryError(f"convert needs a flax.linen Module, got {type(model).__name__}.")
    if model.scope is not None:
        raise SurgeryError(
            "convert needs an unbound module (the one you call .init/.apply on), not a bound one."
        )
    policy = _as_policy(policy)
    converted = CSRConverted(model=model, policy=policy, t1_as_csr=t1_as_csr)
    before = abstract_init(model, example_args, example_kwargs, rngs=init_rngs)
    with recording() as calls:
        after = abstract_init(converted, example_args, example_kwargs, rngs=init_rngs)
    unused = unused_rules(policy, calls)
    if not allow_unused_rules or not calls:
        check_coverage(
            policy,
            calls,
            type(model).__name__,
            hint="Fix the rule, or pass allow_unused_rules=True to list it in the report instead.",
        )
    report = SurgeryReport(
        records=build_records(calls, before),
        policy=policy,
        model_params_before=count_params(before),
        model_params_after=count_params(after),
        unused_rules=unused,
    )
    return converted, report


_MOVED = {
    "ConvRule": "csr_jax.policy.Rule: ConvRule(3, include='x', exclude='y', min_in_channels=8) is now "
    "Rule(3, path='x', exclude='y', min_in_channels=8); ConvRule(keep=True, ...) is Rule(1, ...); depthwise "
    "convs match unless depthwise=False; ConvRule(1, ...) conversions need convert(..., t1_as_csr=True)",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        raise AttributeError(f"csr_jax.surgery.{name} was replaced by {_MOVED[name]}.")
    raise AttributeError(f"module 'csr_jax.surgery' has no attribute {name!r}")
