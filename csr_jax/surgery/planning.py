"""What surgery does with one conv call: the policy's decision, unless ``CSRConv`` cannot represent it.

Convs are never silently mis-converted. A conv that a rule selects but that ``CSRConv`` cannot
compute exactly (grouped but not depthwise, dilated, 1-D/3-D, transposed, locally connected,
circular/reflect/causal padding, masked, a custom conv op, an even kernel with T > 1, T above the
channel count) stays an ordinary conv, with the reason in its decision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn
from flax.linen.dtypes import promote_dtype as _default_promote_dtype

from csr_jax.conv_sites import broadcast
from csr_jax.policy import CSR, KEPT, UNSUPPORTED, ConvSite, CSRPolicy, Decision

__all__ = ["csr_padding", "plan", "unsupported_reason"]


def unsupported_reason(
    module: nn.Module, site: ConvSite, x_shape: tuple[int, ...], steps: int
) -> str | None:
    """Why ``CSRConv(steps)`` cannot compute this conv's function, or None if it can."""
    if isinstance(module, nn.ConvTranspose):
        return "nn.ConvTranspose (CSR-Conv has no transposed form)"
    if isinstance(module, nn.ConvLocal):
        return "nn.ConvLocal (unshared weights per pixel)"
    if type(module).__call__ is not nn.Conv.__call__:
        return f"{type(module).__name__} overrides nn.Conv.__call__ (its function is unknown)"
    kernel = site.kernel_size
    if len(kernel) != 2:
        return f"{len(kernel)}-D conv (CSRConv is 2-D)"
    if len(x_shape) < 3:
        return f"input of rank {len(x_shape)} (a 2-D conv needs (..., H, W, C))"
    if site.groups != 1 and not site.depthwise:
        return (
            f"grouped conv (feature_group_count={site.groups}, C_in={site.in_channels}, "
            f"C_out={site.out_channels}); only depthwise convs (groups == C_in == C_out) have a CSR form"
        )
    if any(d != 1 for d in broadcast(module.input_dilation, 2)):
        return f"input dilation {module.input_dilation}"
    if any(d != 1 for d in broadcast(module.kernel_dilation, 2)):
        return f"kernel dilation {module.kernel_dilation}"
    if isinstance(module.padding, str) and module.padding.upper() not in (
        "SAME",
        "VALID",
        "SAME_LOWER",
    ):
        return f"padding {module.padding!r}"
    if module.mask is not None:
        return "masked kernel (mask is set)"
    if module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None:
        return "custom conv_general_dilated"
    if module.promote_dtype is not _default_promote_dtype:
        return "custom promote_dtype"
    if steps > 1 and any(k % 2 == 0 for k in kernel):
        return f"even kernel {'x'.join(map(str, kernel))} with T={steps} (the hidden conv needs an odd kernel)"
    limit = min(site.in_channels, site.out_channels)
    if steps > limit:
        return f"T={steps} exceeds min(C_in, C_out)={limit} (every step needs a channel)"
    return None


def csr_padding(module: nn.Conv, x_shape: tuple[int, ...], site: ConvSite) -> Any:
    """The conv's padding in a form ``CSRConv`` accepts, meaning exactly the same pads."""
    padding = module.padding
    if isinstance(padding, str):
        upper = padding.upper()
        if upper in ("SAME", "VALID"):
            return upper
        pads = jax.lax.padtype_to_pads(x_shape[-3:-1], site.kernel_size, site.strides, upper)
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(
        (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding
    )


def plan(
    module: nn.Module, site: ConvSite, x_shape: tuple[int, ...], policy: CSRPolicy, t1_as_csr: bool
) -> Decision:
    """The policy's decision for one conv call, turned 'unsupported' where CSRConv cannot do it.

    With ``t1_as_csr`` a rule with T = 1 builds a ``CSRConv`` with one step (the conv itself,
    its weights renamed) instead of keeping the conv, to check a conversion end to end.
    """
    decision = policy.decide(site)
    if decision.status == KEPT and t1_as_csr:
        decision = Decision(1, decision.rule, CSR)
    if decision.status != CSR:
        return decision
    reason = unsupported_reason(module, site, x_shape, decision.steps)
    if reason is not None:
        return dataclasses.replace(decision, steps=1, status=UNSUPPORTED, reason=reason)
    return decision
