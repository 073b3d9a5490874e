"""Parameter and multiply-accumulate (MAC) accounting for CSR-Conv and whole models.

CSR-Conv saves parameters far more than compute: its input path still touches every channel
(T * g_in * g_out * k^2 MACs per output pixel) and the hidden path adds (T - 1) * g_out^2 * k^2.
Reporting both, from closed forms that tests check against the real layers, keeps claims honest.

Closed forms (k = kh * kw, g_in = ceil(C_in/T), g_out = ceil(C_out/T)):

* ordinary conv:   params k*C_in*C_out/groups (+ C_out bias); MACs/pixel k*C_in*C_out/groups
* CSR-Conv, T > 1: params k*g_in*g_out + k*g_out^2 + 2 (+ 2*g_out biases)
                   depthwise: 2*k*g_out + 2 (+ 2*g_out)
                   MACs/pixel T*g_in*g_out*k + (T-1)*g_out^2*k; depthwise T*g_out*k + (T-1)*g_out*k
* CSR-Conv, T = 1: exactly the ordinary conv (no hidden kernel, no alpha/beta).

MACs are per image: per output pixel times H' * W' (the layer's output size).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn

from csr_jax.conv_sites import abstract_init, site_of
from csr_jax.csr_conv import CSRConv, _pair, csr_group_sizes

__all__ = [
    "conv_params",
    "csr_conv_params",
    "conv_macs",
    "csr_conv_macs",
    "count_params",
    "LayerInfo",
    "layer_report",
    "model_macs",
    "format_report",
]


def _ksize(kernel_size: int | Sequence[int]) -> int:
    kh, kw = _pair(kernel_size, "kernel_size")
    return kh * kw


def _hw(out_hw: int | Sequence[int]) -> int:
    h, w = (out_hw, out_hw) if isinstance(out_hw, int) else tuple(out_hw)
    return int(h) * int(w)


def conv_params(
    c_in: int,
    c_out: int,
    kernel_size: int | Sequence[int],
    *,
    use_bias: bool = False,
    groups: int = 1,
) -> int:
    """Parameters of an ordinary (optionally grouped) conv."""
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}.")
    return _ksize(kernel_size) * (c_in // groups) * c_out + (c_out if use_bias else 0)


def csr_conv_params(
    c_in: int,
    c_out: int,
    kernel_size: int | Sequence[int],
    steps: int,
    *,
    use_bias: bool = False,
    depthwise: bool = False,
) -> int:
    """Parameters of a ``CSRConv`` (docs/csr_conv.md §8); ``steps=1`` is the ordinary conv."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if depthwise and c_in != c_out:
        raise ValueError(f"depthwise CSR needs c_in == c_out, got {c_in} and {c_out}.")
    k = _ksize(kernel_size)
    if steps == 1:
        return conv_params(
            c_in, c_out, kernel_size, use_bias=use_bias, groups=c_in if depthwise else 1
        )
    g_in, g_out = csr_group_sizes(c_in, c_out, steps)
    if depthwise:
        weights = 2 * k * g_out
    else:
        weights = k * g_in * g_out + k * g_out * g_out
    return weights + 2 + (2 * g_out if use_bias else 0)


def conv_macs(
    c_in: int,
    c_out: int,
    kernel_size: int | Sequence[int],
    out_hw: int | Sequence[int],
    *,
    groups: int = 1,
) -> int:
    """Multiply-accumulates of an ordinary conv for one image with output size ``out_hw``."""
    return _ksize(kernel_size) * (c_in // groups) * c_out * _hw(out_hw)


def csr_conv_macs(
    c_in: int,
    c_out: int,
    kernel_size: int | Sequence[int],
    steps: int,
    out_hw: int | Sequence[int],
    *,
    depthwise: bool = False,
) -> int:
    """Multiply-accumulates of a ``CSRConv`` for one image (docs/csr_conv.md §9)."""
    k = _ksize(kernel_size)
    if steps == 1:
        return conv_macs(c_in, c_out, kernel_size, out_hw, groups=c_in if depthwise else 1)
    g_in, g_out = csr_group_sizes(c_in, c_out, steps)
    if depthwise:
        per_pixel = steps * g_out * k + (steps - 1) * g_out * k
    else:
        per_pixel = steps * g_in * g_out * k + (steps - 1) * g_out * g_out * k
    return per_pixel * _hw(out_hw)


def count_params(variables: Any) -> int:
    """Number of parameters in the ``params`` collection (BatchNorm statistics excluded).

    Accepts a full variables dict (``{'params': ..., 'batch_stats': ...}``), a bare params tree,
    or the ``jax.ShapeDtypeStruct`` tree that ``jax.eval_shape`` returns.
    """
    if isinstance(variables, dict) or hasattr(variables, "keys"):
        if "params" in variables:
            variables = variables["params"]
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables)))


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One parametrised layer of a model as the accounting sees it."""

    path: str
    kind: str  # 'conv', 'csr_conv' or 'dense'
    c_in: int
    c_out: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    steps: int  # 1 for ordinary layers
    groups: int
    depthwise: bool
    out_hw: tuple[int, int]
    params: int
    macs: int  # per image


def _layer_info(module: nn.Module, x: Any, y: Any) -> LayerInfo | None:
    if isinstance(module, (CSRConv, nn.Conv)):
        site = site_of(module, x.shape, y.shape)
        path = site.path or type(module).__name__
        if len(site.kernel_size) != 2 or x.ndim != 4:
            raise ValueError(f"layer_report counts 2-D convs only; {path} has input rank {x.ndim}.")
        c_in, c_out, ks, out_hw = site.in_channels, site.out_channels, site.kernel_size, site.out_hw
        if isinstance(module, CSRConv):
            params = csr_conv_params(
                c_in, c_out, ks, module.steps, use_bias=site.use_bias, depthwise=site.depthwise
            )
            macs = csr_conv_macs(c_in, c_out, ks, module.steps, out_hw, depthwise=site.depthwise)
            return LayerInfo(
                path,
                "csr_conv",
                c_in,
                c_out,
                ks,
                site.strides,
                module.steps,
                site.groups,
                site.depthwise,
                out_hw,
                params,
                macs,
            )
        params = conv_params(c_in, c_out, ks, use_bias=site.use_bias, groups=site.groups)
        macs = conv_macs(c_in, c_out, ks, out_hw, groups=site.groups)
        return LayerInfo(
            path,
            "conv",
            c_in,
            c_out,
            ks,
            site.strides,
            1,
            site.groups,
            site.depthwise,
            out_hw,
            params,
            macs,
        )
    if isinstance(module, nn.Dense):
        path = "/".join(str(p) for p in module.path) or type(module).__name__
        c_in, c_out = x.shape[-1], y.shape[-1]
        positions = int(np.prod(y.shape[1:-1])) if y.ndim > 2 else 1
        return LayerInfo(
            path,
            "dense",
            c_in,
            c_out,
            (1, 1),
            (1, 1),
            1,
            1,
            False,
            (1, 1),
            c_in * c_out + (c_out if module.use_bias else 0),
            c_in * c_out * positions,
        )
    return None


def layer_report(
    model: nn.Module, *args: Any, method: Any = None, **kwargs: Any
) -> list[LayerInfo]:
    """Per-layer parameters and MACs of every ``nn.Conv``, ``CSRConv`` and ``nn.Dense`` of a model.

    The model is initialised abstractly under ``jax.eval_shape`` (nothing is compiled or
    computed), with ``args``/``kwargs`` as its call arguments (arrays or ``jax.ShapeDtypeStruct``;
    other keyword arguments such as ``train=False`` stay static Python values, since models branch
    on them). MACs are per image, whatever the batch size. Layers are captured with
    ``nn.intercept_methods``, so any linen model works, not only this project's. Layers called
    several times appear once per call.
    """
    records: list[LayerInfo] = []

    def interceptor(next_fun, call_args, call_kwargs, context):
        before = len(records)
        y = next_fun(*call_args, **call_kwargs)
        if context.method_name == "__call__" and isinstance(
            context.module, (CSRConv, nn.Conv, nn.Dense)
        ):
            # A conv replaced in place (csr_jax.surgery) runs a CSRConv inside its own call;
            # that CSRConv is the layer that exists, so the conv itself is not counted again.
            replaced = any(r.kind == "csr_conv" for r in records[before:])
            info = None if replaced else _layer_info(context.module, call_args[0], y)
            if info is not None:
                records.append(info)
        return y

    with nn.intercept_methods(interceptor):
        abstract_init(model, args, kwargs, method=method)
    return records


def model_macs(model: nn.Module, *args: Any, **kwargs: Any) -> int:
    """Total conv + dense MACs of one call, per image."""
    return sum(r.macs for r in layer_report(model, *args, **kwargs))


def format_report(records: Sequence[LayerInfo]) -> str:
    """A plain-text table of a ``layer_report`` (one row a layer, totals last)."""
    header = f"{'layer':<48} {'kind':<8} {'in':>5} {'out':>5} {'k':>5} {'T':>2} {'params':>11} {'MACs':>14}"
    lines = [header, "-" * len(header)]
    for r in records:
        k = f"{r.kernel_size[0]}x{r.kernel_size[1]}"
        lines.append(
            f"{r.path[-48:]:<48} {r.kind:<8} {r.c_in:>5} {r.c_out:>5} {k:>5} {r.steps:>2} {r.params:>11,} {r.macs:>14,}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<48} {'':<8} {'':>5} {'':>5} {'':>5} {'':>2} "
        f"{sum(r.params for r in records):>11,} {sum(r.macs for r in records):>14,}"
    )
    return "\n".join(lines)
