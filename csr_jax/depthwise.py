"""Depthwise convolution that XLA:CPU runs fast, with the XLA conv kept for GPU/TPU.

XLA:CPU lowers a depthwise ``lax.conv_general_dilated`` (``feature_group_count`` == channels)
to a slow generic loop, forward and backward. Written as the sum of its k*k shifted taps --
``y = sum_ij x_pad[:, i::s, j::s, :] * w[i, j]``, elementwise multiplies and adds that XLA fuses
into one loop, with a backward pass of the same kind (below) -- the same
function trained 5-40x faster on a 2-core AVX2 CPU at MobileNetV2/EfficientNet shapes (k = 3 and
5, strides 1 and 2; ``benchmarks/depthwise_bench.py``, numbers in ``benchmarks/RESULTS.md``). The
other candidates measured there were slower: an im2col stack contracted with the kernel (it
materialises k*k copies of the input) and, for stride 2, a phase split (space-to-depth) instead
of strided slices. On GPU/TPU the vendor depthwise kernels are fast, so there the XLA conv stays.

The other convolutions' CPU forms live here too, behind the same switch: 1x1 convs as one dot
(:func:`pointwise_conv`), and other ordinary k x k convs as XLA's conv whose kernel gradient is
summed over chunks of the batch (:func:`dense_conv`).

The choice is made at trace time from ``jax.default_backend()`` (or forced: the ``impl``
argument, or :func:`forced_impl` for everything traced in a block); both
implementations take the same ``(kh, kw, 1, C)`` kernel, so parameters and checkpoints move
freely between CPU and accelerators. The taps accumulate in float32 (also for bf16 inputs) and
round once at the end, like the conv.

On the CPU path, float32 depthwise convs in a single-device process run native kernels instead
(:mod:`csr_jax.native`: C++ built on first use, one pass each for the forward, the input gradient
and the kernel gradient; the MobileNetV2-CIFAR train step 1.23x faster than with the taps below,
``benchmarks/RESULTS.md`` section 13). The taps remain for other dtypes, for several devices (XLA
cannot partition a custom call), where no compiler is found, and under ``native.disabled()``.

The taps path has its own backward pass (``jax.custom_vjp``). Left to autodiff, the gradient of
each tap slice is a zero-padded full-size tensor, and XLA:CPU then materialises every tap (the
input, re-normalised, once per tap) to feed the k*k kernel-gradient reductions: in the
MobileNetV2-CIFAR train step that was the largest single cost. The custom backward computes the
input gradient as ONE fused sum of k*k taps of the stride-dilated cotangent with the flipped
kernel, and each kernel-gradient entry as one reduction: on large stride-1 maps of the padded
input times the cotangent padded to the tap's offset (a pad XLA fuses into the reduction), else
of a tap slice of the input times the cotangent. Forward-mode differentiation
(``jax.jvp``, ``jax.jacfwd``) is not defined for it; use the ``"xla"`` path there
(:func:`forced_impl`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from csr_jax import native

Array = jax.Array

__all__ = [
    "IMPLS",
    "conv_general_dilated",
    "default_impl",
    "dense_conv",
    "depthwise_conv",
    "forced_impl",
    "pointwise_conv",
]

#: ``"taps"``: sum of shifted multiplies (fast on XLA:CPU); ``"xla"``: ``lax.conv_general_dilated``
#: with ``feature_group_count`` (cuDNN / TPU convs).
IMPLS = ("taps", "xla")

_NHWC = ("NHWC", "HWIO", "NHWC")


_forced: list[str] = []

#: The kernel gradient pads the cotangent (instead of slicing the input) while the padded map is at
#: most this much larger than the output map: measured on MobileNetV2-CIFAR (32x32 and 16x16 maps,
#: 1.13x and 1.27x: faster padded) and EfficientNet-B0 at 32px (4x4 and smaller, k=5: slower).
_PADDED_COTANGENT_MAX_GROWTH = 1.3


def default_impl() -> str:
    """What ``impl=None`` means now: the innermost :func:`forced_impl`, else by the default
    backend, ``"taps"`` on CPU and ``"xla"`` on GPU/TPU."""
    if _forced:
        return _forced[-1]
    return "taps" if jax.default_backend() == "cpu" else "xla"


def _check(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(
            f"depthwise impl must be None (choose by backend) or one of {IMPLS}, got {impl!r}."
        )
    return impl


def _resolve(impl: str | None) -> str:
    return default_impl() if impl is None else _check(impl)


@contextlib.contextmanager
def forced_impl(impl: str) -> Iterator[None]:
    """Makes every depthwise conv TRACED inside the block (``impl=None``: the conv factory's and
    ``CSRConv``'s) use ``impl`` -- to test both paths on one machine, or to time them.

    The same switch picks csr_jax's other CPU forms: ``CSRConv``'s widening 1x1 layers (their
    second hidden term composed, ``r_2 = (U V) x_1``, on ``"taps"``; step by step on ``"xla"``)
    and the backbones' BatchNorm
    (:class:`csr_jax.models.batch_norm.FusedBatchNorm`'s backward on ``"taps"``, ``nn.BatchNorm``
    on ``"xla"``). ``forced_impl("xla")`` therefore also gives a network that forward-mode
    autodiff (``jax.jvp``, ``jax.jacfwd``) can differentiate.

    The choice is made at trace time, so a function jitted and cached before keeps its path:
    trace it anew (a fresh ``jax.jit``) inside the block.
    """
    _forced.append(_check(impl))
    try:
        yield
    finally:
        _forced.pop()


def _stride_pair(strides: int | Sequence[int]) -> tuple[int, int]:
    return (strides, strides) if isinstance(strides, int) else (int(strides[0]), int(strides[1]))


def _pads(
    padding: str | Sequence[tuple[int, int]],
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    strides: Sequence[int],
) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return [
            tuple(p)
            for p in lax.padtype_to_pads(
                tuple(in_hw), tuple(kernel_hw), tuple(strides), padding.upper()
            )
        ]
    pads = [(int(lo), int(hi)) for lo, hi in padding]
    if len(pads) != 2:
        raise ValueError(
            f"depthwise_conv is 2-D: padding needs two (low, high) pairs, got {padding!r}."
        )
    return pads


def _out_hw(x_hw, kernel_hw, strides, pads) -> tuple[int, int]:
    return tuple(
        (size + lo + hi - k) // s + 1
        for size, k, s, (lo, hi) in zip(x_hw, kernel_hw, strides, pads)
    )


def _pad_hw(x: Array, pads, interior=(0, 0)) -> Array:
    zero = jnp.zeros((), x.dtype)
    return lax.pad(
        x, zero, [(0, 0, 0), (*pads[0], interior[0]), (*pads[1], interior[1]), (0, 0, 0)]
    )


def _tap(xp: Array, i: int, j: int, strides, out_hw) -> Array:
    """Tap ``(i, j)`` of a padded map: ``xp[:, i::s, j::s, :]`` cut to ``out_hw``."""
    n, c = xp.shape[0], xp.shape[-1]
    (sh, sw), (h_out, w_out) = strides, out_hw
    return lax.slice(
        xp,
        (0, i, j, 0),
        (n, i + (h_out - 1) * sh + 1, j + (w_out - 1) * sw + 1, c),
        (1, sh, sw, 1),
    )


def _sum_taps(xp: Array, kernel: Array, strides, out_hw, acc_dtype) -> Array:
    """``sum_ij xp[:, i::s, j::s, :][:out_hw] * kernel[i, j, 0]``, accumulated in ``acc_dtype``."""
    kh, kw = kernel.shape[:2]
    w = kernel.astype(acc_dtype)
    y = None
    for i in range(kh):
        for j in range(kw):
            term = _tap(xp, i, j, strides, out_hw).astype(acc_dtype) * w[i, j, 0]
            y = term if y is None else y + term
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _taps(x: Array, kernel: Array, strides: tuple[int, int], pads) -> Array:
    kh, kw = kernel.shape[:2]
    out_hw = _out_hw(x.shape[1:3], (kh, kw), strides, pads)
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ValueError(
            f"depthwise_conv: a {kh}x{kw} window with padding {pads} does not fit input {x.shape}."
        )
    acc = jnp.promote_types(x.dtype, jnp.float32)
    return _sum_taps(_pad_hw(x, pads), kernel, strides, out_hw, acc).astype(x.dtype)


def _taps_fwd(x, kernel, strides, pads):
    return _taps(x, kernel, strides, pads), (x, kernel)


def _taps_bwd(strides, pads, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    height, width = x.shape[1:3]
    sh, sw = strides
    h_out, w_out = g.shape[1:3]
    acc = jnp.promote_types(x.dtype, jnp.float32)
    # Rows/cols of the padded input the strided windows start on, dilated: (out - 1) * s + 1.
    lh, lw = (h_out - 1) * sh + 1, (w_out - 1) * sw + 1
    # Input gradient: the cotangent, dilated by the stride and padded so that a stride-1
    # correlation with the flipped kernel lands on x's pixels (negative padding crops).
    g_full = _pad_hw(
        g,
        (
            (kh - 1 - pads[0][0], height + pads[0][0] - lh),
            (kw - 1 - pads[1][0], width + pads[1][0] - lw),
        ),
        (sh - 1, sw - 1),
    )
    dx = _sum_taps(g_full, kernel[::-1, ::-1], (1, 1), (height, width), acc).astype(x.dtype)
    # Kernel gradient, entry (i, j): the sum over batch and space of the padded input's tap (i, j)
    # times the cotangent. Two forms of the same sum, by which XLA:CPU runs faster:
    xp = _pad_hw(x, pads).astype(acc)
    ga = g.astype(acc)
    hp, wp = xp.shape[1:3]
    if (sh, sw) == (1, 1) and hp * wp <= _PADDED_COTANGENT_MAX_GROWTH * h_out * w_out:
        # Large maps, stride 1: the padded input times the cotangent padded to the tap's offset.
        # The pad fuses into the reduction; slicing the input instead made XLA materialise every
        # tap of it (recomputing its producer, e.g. BatchNorm + ReLU6, per tap).
        rows = [
            jnp.sum(xp * _pad_hw(ga, ((i, hp - i - lh), (j, wp - j - lw))), axis=(0, 1, 2))
            for i in range(kh)
            for j in range(kw)
        ]
    else:
        # Small maps (the padding is a large share of them) and strides > 1 (the padded
        # cotangent would be s*s times larger): slices of the input; they are small here.
        rows = [
            jnp.sum(_tap(xp, i, j, strides, (h_out, w_out)) * ga, axis=(0, 1, 2))
            for i in range(kh)
            for j in range(kw)
        ]
    dkernel = jnp.stack(rows).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dkernel


_taps.defvjp(_taps_fwd, _taps_bwd)


def depthwise_conv(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    *,
    precision: Any = None,
    impl: str | None = None,
) -> Array:
    """Depthwise 2-D convolution of NHWC ``x`` with an HWIO kernel ``(kh, kw, 1, C)``.

    Equals ``lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=('NHWC',
    'HWIO', 'NHWC'), feature_group_count=C)`` to float rounding, values and gradients.

    Args:
      x: ``(N, H, W, C)``.
      kernel: ``(kh, kw, 1, C)``, one filter per channel (Flax's depthwise layout).
      strides: int or pair.
      padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))``.
      precision: passed to the XLA conv (the taps are exact float32 multiplies and adds).
      impl: ``None`` chooses at trace time by ``jax.default_backend()`` (``"taps"`` on CPU,
        ``"xla"`` on GPU/TPU) unless inside :func:`forced_impl`; ``"taps"`` or ``"xla"`` forces one.
    """
    strides = _stride_pair(strides)
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(
            f"depthwise_conv needs NHWC x and a (kh, kw, 1, C) kernel with C = x.shape[-1], got x {x.shape} "
            f"and kernel {kernel.shape}; use lax.conv_general_dilated for other convolutions."
        )
    if _resolve(impl) == "xla":
        return lax.conv_general_dilated(
            x,
            kernel,
            strides,
            padding,
            dimension_numbers=_NHWC,
            feature_group_count=x.shape[-1],
            precision=precision,
        )
    pads = tuple(tuple(p) for p in _pads(padding, x.shape[1:3], kernel.shape[:2], strides))
    if _native_fits(x, kernel, pads):
        return native.depthwise_forward(
            x,
            kernel,
            strides,
            (pads[0][0], pads[1][0]),
            _out_hw(x.shape[1:3], kernel.shape[:2], strides, pads),
        )
    return _taps(x, kernel, strides, pads)


def _native_fits(x: Array, kernel: Array, pads) -> bool:
    """Whether the native CPU kernels (:mod:`csr_jax.native`) take this conv: float32, a window
    that fits, no cropping at the low edges, and the kernels usable here (``native.enabled``: on,
    built, one CPU device)."""
    out_hw = _out_hw(x.shape[1:3], kernel.shape[:2], (1, 1), pads)
    return (
        x.dtype == jnp.float32
        and kernel.dtype == jnp.float32
        and min(out_hw) >= 1
        and pads[0][0] >= 0
        and pads[1][0] >= 0
        and native.enabled()
    )


def _is_nhwc(dimension_numbers: Any) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == _NHWC


def pointwise_conv(
    x: Array, kernel: Array, strides: int | Sequence[int] = 1, *, precision: Any = None
) -> Array:
    """A 1x1 conv without padding, ``(1, 1, C_in, C_out)`` kernel, as ONE 2-D matrix product.

    XLA:CPU runs a 1x1 ``conv_general_dilated`` as a generic conv and its kernel gradient as a
    conv over the batch; the same contraction as a dot trained 1.5-8x faster at MobileNetV2's
    expand/project shapes (``benchmarks/RESULTS.md``). A strided 1x1 conv reads every s-th pixel.
    """
    sh, sw = _stride_pair(strides)
    if (sh, sw) != (1, 1):
        x = x[:, ::sh, ::sw, :]
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0], precision=precision)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


#: The kernel gradient of a k x k conv on the CPU path sums per-chunk gradients over chunks of at
#: most this many input bytes and at most _GRAD_CHUNK_MAX_IMAGES images (see :func:`dense_conv`).
_GRAD_CHUNK_BYTES = 2 << 20
_GRAD_CHUNK_MAX_IMAGES = 8


def _xla_conv(x, w, strides, pads, precision):
    return lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _chunked_grad_conv(x: Array, w: Array, strides, pads, precision) -> Array:
    return _xla_conv(x, w, strides, pads, precision)


def _chunked_grad_conv_fwd(x, w, strides, pads, precision):
    return _xla_conv(x, w, strides, pads, precision), (x, w)


def _chunked_grad_conv_bwd(strides, pads, precision, residuals, g):
    x, w = residuals
    (dx,) = jax.vjp(lambda x: _xla_conv(x, w, strides, pads, precision), x)[1](g)
    n = x.shape[0]
    per_image = x.size // n * x.dtype.itemsize
    m = max(1, min(_GRAD_CHUNK_MAX_IMAGES, _GRAD_CHUNK_BYTES // per_image))
    dw = None
    for lo in range(0, n, m):
        x_c, g_c = x[lo : lo + m], g[lo : lo + m]
        (part,) = jax.vjp(lambda w: _xla_conv(x_c, w, strides, pads, precision), w)[1](g_c)
        part = part.astype(jnp.promote_types(w.dtype, jnp.float32))
        dw = part if dw is None else dw + part
    return dx, dw.astype(w.dtype)


_chunked_grad_conv.defvjp(_chunked_grad_conv_fwd, _chunked_grad_conv_bwd)


def dense_conv(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    *,
    precision: Any = None,
    impl: str | None = None,
) -> Array:
    """An ordinary (not grouped) 2-D NHWC convolution with an HWIO kernel: exactly
    ``lax.conv_general_dilated``, whose kernel gradient on the CPU path (``impl`` ``"taps"``) is
    summed over chunks of the batch.

    XLA:CPU computes a k x k conv's kernel gradient as one convolution over the whole batch, and
    that ran 2-4x slower than over chunks of a few images whose gradients are then added: for a
    (128, 32, 32, 16) 3x3 layer 18.7 ms against 5.9 ms in chunks of 8 images, on a 2-core Xeon
    (``benchmarks/RESULTS.md`` section 12). The forward pass and the input gradient are XLA's
    own. Chunks hold at most 8 images and 2 MiB of input. Like the depthwise CPU path, the custom
    backward has no forward-mode derivative: use ``forced_impl("xla")`` for ``jax.jvp``.
    """
    strides = _stride_pair(strides)
    if _resolve(impl) == "xla":
        return _xla_conv(x, kernel, strides, padding, precision)
    pads = tuple(tuple(p) for p in _pads(padding, x.shape[1:3], kernel.shape[:2], strides))
    return _chunked_grad_conv(x, kernel, strides, pads, precision)


def _no_padding(padding: Any) -> bool:
    return isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding)


@functools.lru_cache(maxsize=None)
def conv_general_dilated(impl: str | None = None):
    """A drop-in for ``lax.conv_general_dilated`` (``nn.Conv(conv_general_dilated=...)``) that,
    on the CPU path (``impl`` ``"taps"``), sends plain 2-D NHWC depthwise convs to
    :func:`depthwise_conv`, unpadded 1x1 convs to :func:`pointwise_conv` and other ungrouped
    convs to :func:`dense_conv`; everything else, and everything on the ``"xla"`` path
    (GPU/TPU), goes to ``lax.conv_general_dilated``.

    A 1x1 'SAME' or 'VALID' conv never pads, at any stride. ``nn.Conv`` keeps its parameter
    tree, so a conv built with it loads the same checkpoints. ``impl`` as in
    :func:`depthwise_conv`; one function object per ``impl`` (cached).
    """

    def conv(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
    ):
        plain = (
            lhs.ndim == 4
            and _is_nhwc(dimension_numbers)
            and batch_group_count == 1
            and preferred_element_type is None
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        )
        if plain and _resolve(impl) == "taps":
            if (
                feature_group_count == lhs.shape[-1] > 1
                and rhs.shape[2] == 1
                and rhs.shape[3] == lhs.shape[-1]
            ):
                return depthwise_conv(
                    lhs, rhs, window_strides, padding, precision=precision, impl="taps"
                )
            if feature_group_count == 1 and rhs.shape[:2] == (1, 1) and _no_padding(padding):
                return pointwise_conv(lhs, rhs, window_strides, precision=precision)
            if feature_group_count == 1:
                return dense_conv(
                    lhs, rhs, window_strides, padding, precision=precision, impl="taps"
                )
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )

    return conv
