"""CSR-Conv: Channel-Split Recurrent Convolution (Wu et al., WACV 2023) as a Flax linen layer.

The layer splits the input channels into ``steps`` (T) consecutive chunks and runs a recurrence
over them whose two convolution kernels are shared by every step, so the parameter count falls
roughly as 1/T^2 against an ordinary convolution with the same channels. The exact semantics
(channel wrap-around, the first step without a hidden term, the Euler-step update with the
learnable scalars alpha and beta) are those of the authors' reference code; see SPEC.md.

Why the computation is organised the way it is (measured in ``benchmarks/RESULTS.md``):

* The input path ``a_t = U * x_t + b_U`` has no dependence between steps, so all T chunks go
  through ONE op. For 1x1 kernels (any stride) it is a plain contraction over the channels in
  their natural ``(N, H, W, T, g)`` order -- no transpose, and XLA runs a dot much faster than a
  1x1 ``conv_general_dilated``; depthwise kernels are tiled over the T chunks (one depthwise
  conv, natural order too); other k x k kernels fold T into the batch (time-major).
* Only the hidden path ``r_t = V * h_{t-1} + b_V`` is sequential. For T <= 8 (every listed preset) it
  is unrolled in Python by default: T - 1 <= 7 steps compile to straight-line code that XLA
  fuses freely (the update ``alpha*relu(a+r) + (1-beta)*r`` joins the producer/consumer
  fusions), where a rolled ``lax.scan`` is a while loop that slices its input and writes its
  stacked output with dynamic indices every step, in the forward and again in the backward
  pass, with no fusion across iterations (on XLA:CPU a layer with a 3x3 hidden conv ran 7-11x
  slower rolled). Longer recurrences use the scan, to bound compile time and program size.
* The steps are cut from ``a`` with ONE split (its gradient is one concatenate; per-step slices
  would each turn into a zero-padded full-size gradient, all added up), and their outputs are
  stacked directly in ``(N, H, W, T, g)`` order, which IS the concatenation over channels, so
  no re-interleaving transpose is needed at the end.
* A 1x1 hidden kernel is applied as a dot for the same reason as the input path.
* The hidden path is a pure function of its parameters (created by ``_HiddenParams`` under
  ``hidden/``), not a module, so how the steps are run does not change the parameter tree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

Array = jax.Array
Dtype = Any
PaddingLike = str | int | Sequence[int | tuple[int, int]]
Initializer = Callable[..., Array]

__all__ = ["CSRConv", "csr_group_sizes", "reference_bias_init", "reference_kernel_init"]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

#: PyTorch's default conv init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
#: Flax computes fan_in of an HWIO kernel as kh*kw*in, which is also right for depthwise (in=1).
reference_kernel_init: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def reference_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    A bias initializer cannot see the kernel's fan-in, so the layer builds this one per kernel.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def csr_group_sizes(in_features: int, out_features: int, steps: int) -> tuple[int, int]:
    """Channels per step ``(g_in, g_out) = (ceil(C_in / T), ceil(C_out / T))``."""
    return -(-in_features // steps), -(-out_features // steps)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(value)
        if len(pair) == 1:
            pair = (pair[0], pair[0])
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(
            f"CSRConv: {name} must be a positive int or a pair of positive ints "
            f"(CSRConv is 2-D, NHWC), got {value!r}."
        )
    return pair  # type: ignore[return-value]


def _canonical_padding(padding: PaddingLike) -> str | list[tuple[int, int]]:
    """Accepts what ``nn.Conv`` accepts for 2-D convs; an int p means symmetric p (PyTorch)."""
    if isinstance(padding, str):
        upper = padding.upper()
        if upper in ("SAME", "VALID"):
            return upper
        raise ValueError(
            f"CSRConv: padding {padding!r} is not supported; use 'SAME', 'VALID', an int, "
            "a pair of ints, or a pair of (low, high) pairs."
        )
    if isinstance(padding, int) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"CSRConv: padding must be >= 0, got {padding}.")
        return [(padding, padding)] * 2
    if isinstance(padding, Sequence) and len(padding) == 2:
        pads = []
        for p in padding:
            if isinstance(p, int) and p >= 0:
                pads.append((p, p))
            elif isinstance(p, Sequence) and len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p):
                pads.append((int(p[0]), int(p[1])))
            else:
                break
        if len(pads) == 2:
            return pads
    raise ValueError(
        f"CSRConv: invalid padding {padding!r}; use 'SAME', 'VALID', an int p (p on every side), "
        "a pair of ints (one per spatial dim), or ((top, bottom), (left, right))."
    )


#: ``unroll=None`` unrolls the hidden recurrence fully up to this many steps (T - 1 <= 7 steps of
#: straight-line code); beyond it a rolled scan keeps compile time and program size bounded.
FULL_UNROLL_MAX_STEPS = 8


def _is_zero_padding(padding: str | list[tuple[int, int]]) -> bool:
    """True when a 1x1 window adds no padding ('SAME' never pads a 1x1 kernel, at any stride)."""
    return padding in ("SAME", "VALID") or all(p == (0, 0) for p in padding)


class _HiddenParams(nn.Module):
    """The hidden path's parameters, created once and shared by all steps: ``hidden_kernel``
    (V), ``alpha``, ``beta`` and ``hidden_bias`` (b_V). The recurrence itself is the pure
    function :func:`_hidden_path`, so it can be unrolled, scanned or rematerialised freely."""

    features: int
    kernel_size: tuple[int, int]
    use_bias: bool
    depthwise: bool
    param_dtype: Dtype
    kernel_init: Initializer
    bias_init: Initializer | None

    @nn.compact
    def __call__(self) -> tuple[Array, Array | None, Array, Array]:
        kh, kw = self.kernel_size
        g = self.features
        kernel = self.param(
            "hidden_kernel", self.kernel_init, (kh, kw, 1 if self.depthwise else g, g), self.param_dtype
        )
        alpha = self.param("alpha", nn.initializers.constant(0.5), (), self.param_dtype)
        beta = self.param("beta", nn.initializers.constant(0.5), (), self.param_dtype)
        bias = None
        if self.use_bias:
            fan_in = kh * kw * (1 if self.depthwise else g)
            bias_init = self.bias_init or reference_bias_init(fan_in)
            bias = self.param("hidden_bias", bias_init, (g,), self.param_dtype)
        return kernel, bias, alpha, beta


def _matmul(x: Array, w: Array, precision: Any) -> Array:
    """``x @ w`` over the last axis, as ONE 2-D matrix product of all leading positions.

    Written as a 2-D dot rather than ``einsum('nhwc,cd->nhwd')``: the gradient of the einsum
    contracts over three axes and XLA:CPU then transposes the operands; the 2-D form ran the
    forward+backward of a 96 -> 576 1x1 layer 2x faster (``benchmarks/RESULTS.md``).
    """
    out = jnp.dot(x.reshape(-1, x.shape[-1]), w, precision=precision)
    return out.reshape(*x.shape[:-1], w.shape[-1])


def _hidden_step(h: Array, a: Array, kernel: Array, bias: Array | None, alpha: Array, beta: Array, *,
                 depthwise: bool, precision: Any) -> Array:
    """``h_t = alpha * relu(a_t + r_t) + (1 - beta) * r_t`` with ``r_t = V * h_{t-1} + b_V``."""
    kh, kw, _, g = kernel.shape
    if (kh, kw) == (1, 1) and not depthwise:
        # A 1x1 conv is a contraction; XLA runs it faster as a dot than as a conv.
        r = _matmul(h, kernel[0, 0], precision)
    else:
        r = jax.lax.conv_general_dilated(
            h,
            kernel,
            window_strides=(1, 1),
            padding=[((kh - 1) // 2, (kh - 1) // 2), ((kw - 1) // 2, (kw - 1) // 2)],
            dimension_numbers=_DIMENSION_NUMBERS,
            feature_group_count=g if depthwise else 1,
            precision=precision,
        )
    if bias is not None:
        r = r + bias
    return alpha * jax.nn.relu(a + r) + (1 - beta) * r


def _hidden_path(a: Array, time_axis: int, kernel: Array, bias: Array | None, alpha: Array, beta: Array, *,
                 depthwise: bool, precision: Any, unroll: int | None) -> Array:
    """All T steps from the input-path outputs ``a`` (T along ``time_axis``); returns
    ``(N, H', W', T, g)`` = h_1 .. h_T stacked along axis 3.

    ``unroll=None`` runs the steps as straight-line Python; an int runs ``lax.scan`` with that
    unroll factor. ``a`` is cut with ONE split rather than per-step slices: the gradient of a
    split is one concatenate, that of T slices is T zero-padded full-size tensors added up.
    """
    steps = a.shape[time_axis]
    step = functools.partial(_hidden_step, kernel=kernel, bias=bias, alpha=alpha, beta=beta,
                             depthwise=depthwise, precision=precision)
    if unroll is None:
        a_steps = [jnp.squeeze(c, time_axis) for c in jax.lax.split(a, [1] * steps, axis=time_axis)]
        hs = [a_steps[0]]  # h_1 = a_1
        for a_t in a_steps[1:]:
            hs.append(step(hs[-1], a_t))
        return jnp.stack(hs, axis=3)
    first, rest = jax.lax.split(a, [1, steps - 1], axis=time_axis)
    first = jnp.squeeze(first, time_axis)

    def body(h, a_t):
        h = step(h, a_t)
        return h, h

    _, hs = jax.lax.scan(body, first, jnp.moveaxis(rest, time_axis, 0), unroll=unroll)  # (T-1, N, H', W', g)
    return jnp.concatenate([first[None], hs], axis=0).transpose(1, 2, 3, 0, 4)


class CSRConv(nn.Module):
    """Channel-Split Recurrent Convolution, a drop-in replacement for a 2-D ``nn.Conv``.

    Splits the (wrapped-around) input channels into ``steps`` chunks of ``g_in = ceil(C_in/T)``
    channels and computes::

        h_1 = U * x_1 + b_U
        h_t = alpha * relu(U * x_t + b_U + r_t) + (1 - beta) * r_t,  r_t = V * h_{t-1} + b_V
        y   = concat(h_1, ..., h_T)[..., :features]

    with ``U`` (k x k, g_in -> g_out, the layer's stride and padding) and ``V`` (k x k,
    g_out -> g_out, stride 1, 'same' padding) shared by every step, ``g_out = ceil(C_out/T)``.
    With ``steps=1`` it is exactly ``nn.Conv`` (no hidden path parameters).

    Attributes:
      features: output channels C_out.
      kernel_size: k or (kh, kw); odd sizes when ``steps > 1`` (the hidden conv keeps the size).
      steps: T >= 1, the number of channel chunks (recurrence length).
      strides: int or pair, stride of the input path.
      padding: 'SAME', 'VALID', an int p (symmetric, like PyTorch), a pair of ints, or
        ((top, bottom), (left, right)) — what ``nn.Conv`` accepts for 2-D inputs.
      use_bias: add ``input_bias`` and ``hidden_bias``.
      depthwise: U and V are depthwise (one filter per channel); needs C_in == C_out.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); None infers it from the inputs/params.
      param_dtype: parameter dtype.
      precision: passed to the convolutions.
      kernel_init: initializer of both kernels (default: PyTorch's conv default, as the reference).
      bias_init: initializer of both biases; None means the reference's U(+-1/sqrt(fan_in)).
      unroll: how the T - 1 hidden steps are run. ``None`` (default): fully unrolled for
        ``steps <= FULL_UNROLL_MAX_STEPS`` (8), a rolled ``lax.scan`` beyond. An int n >= 1: a
        ``lax.scan`` with unroll factor n, so ``unroll=1`` is a rolled loop (one step per
        iteration) and ``n >= steps - 1`` unrolls it fully. The default is not 1 because the
        rolled loop trains measurably slower (``benchmarks/RESULTS.md``): every iteration
        slices its input and writes its output with dynamic indices, in both passes, and XLA
        cannot fuse across iterations. Every value computes the same function.
    """

    features: int
    kernel_size: int | Sequence[int]
    steps: int
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    use_bias: bool = False
    depthwise: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Initializer = reference_kernel_init
    bias_init: Initializer | None = None
    unroll: int | None = None

    def _validate(self, x: Array) -> tuple[tuple[int, int], tuple[int, int], Any]:
        if x.ndim != 4:
            raise ValueError(
                f"CSRConv expects NHWC input of rank 4 (batch, height, width, channels), got shape "
                f"{x.shape}; add a batch axis with x[None] for a single image."
            )
        c_in = x.shape[-1]
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"CSRConv: steps must be an int >= 1, got {self.steps!r}.")
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"CSRConv: features must be an int >= 1, got {self.features!r}.")
        if self.steps > c_in:
            raise ValueError(
                f"CSRConv: steps={self.steps} exceeds the input channels ({c_in}); every step needs "
                f"at least one channel, so use steps <= {c_in}."
            )
        if self.steps > self.features:
            raise ValueError(
                f"CSRConv: steps={self.steps} exceeds features ({self.features}); every step needs at "
                f"least one output channel, so use steps <= {self.features}."
            )
        if self.depthwise and c_in != self.features:
            raise ValueError(
                f"CSRConv: depthwise=True needs as many input as output channels, got {c_in} in and "
                f"{self.features} out; use depthwise=False or features={c_in}."
            )
        kernel_size = _pair(self.kernel_size, "kernel_size")
        strides = _pair(self.strides, "strides")
        if self.steps > 1 and any(k % 2 == 0 for k in kernel_size):
            raise ValueError(
                f"CSRConv: kernel_size {kernel_size} has an even side; the hidden convolution "
                "(stride 1, (k-1)//2 padding) only preserves the spatial size for odd kernels."
            )
        if self.unroll is not None and (isinstance(self.unroll, bool) or not isinstance(self.unroll, int) or self.unroll < 1):
            raise ValueError(
                f"CSRConv: unroll must be None (fully unroll up to {FULL_UNROLL_MAX_STEPS} steps) or an "
                f"int >= 1 (scan unroll factor), got {self.unroll!r}."
            )
        return kernel_size, strides, _canonical_padding(self.padding)

    def _fully_unrolled(self) -> bool:
        """Whether the hidden steps run as straight-line code rather than a scan loop."""
        if self.unroll is None:
            return self.steps <= FULL_UNROLL_MAX_STEPS
        return self.unroll >= self.steps - 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the layer to NHWC ``x``; returns ``(N, H', W', features)``."""
        (kh, kw), strides, padding = self._validate(x)
        n, _, _, c_in = x.shape
        steps = self.steps
        g_in, g_out = csr_group_sizes(c_in, self.features, steps)
        if self.depthwise:
            g_in = g_out  # c_in == features, so ceil(c_in/T) == ceil(features/T)

        kernel = self.param(
            "input_kernel",
            self.kernel_init,
            (kh, kw, 1 if self.depthwise else g_in, g_out),
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            fan_in = kh * kw * (1 if self.depthwise else g_in)
            bias = self.param("input_bias", self.bias_init or reference_bias_init(fan_in), (g_out,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)

        # Channel wrap-around: extend with copies of the input from its first channel on.
        total_in = steps * g_in
        if total_in > c_in:
            reps = -(-total_in // c_in)
            x = jnp.concatenate([x] * reps, axis=-1)[..., :total_in]

        # Input path for all steps at once: a holds a_1..a_T along `time_axis`.
        a, time_axis = self._input_path(x, kernel, (kh, kw), strides, padding, g_in, g_out)
        if bias is not None:
            a = a + bias

        if steps == 1:
            return jnp.squeeze(a, time_axis)[..., : self.features]

        v_kernel, v_bias, alpha, beta = _HiddenParams(
            features=g_out,
            kernel_size=(kh, kw),
            use_bias=self.use_bias,
            depthwise=self.depthwise,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name="hidden",
        )()
        v_kernel, v_bias, alpha, beta = promote_dtype(v_kernel, v_bias, alpha, beta, dtype=a.dtype)
        unroll = None if self._fully_unrolled() else self.unroll or 1
        h = _hidden_path(a, time_axis, v_kernel, v_bias, alpha, beta, depthwise=self.depthwise,
                         precision=self.precision, unroll=unroll)
        _, h_out, w_out, _, _ = h.shape
        # (N, H', W', T, g_out) in row-major order IS concat(h_1, ..., h_T) over channels.
        y = h.reshape(n, h_out, w_out, steps * g_out)
        return y[..., : self.features]

    def _input_path(self, x, kernel, kernel_size, strides, padding, g_in, g_out) -> tuple[Array, int]:
        """``U * x_t`` for every step as one op; returns ``(a, time_axis)``.

        ``a`` is ``(N, H', W', T, g_out)`` (time_axis 3, the channels' own order) for 1x1 and
        depthwise kernels, ``(T, N, H', W', g_out)`` (time_axis 0) for other k x k kernels.
        """
        n, _, _, _ = x.shape
        steps = self.steps
        kh, kw = kernel_size
        if (kh, kw) == (1, 1) and not self.depthwise and _is_zero_padding(padding):
            # A 1x1 conv is a contraction (a strided one reads every s-th pixel), and XLA runs it
            # much faster as a dot than as a conv; the chunks stay in place, no transpose.
            if strides != (1, 1):
                x = x[:, :: strides[0], :: strides[1], :]
            _, height, width, _ = x.shape
            a = _matmul(x.reshape(n, height, width, steps, g_in), kernel[0, 0], self.precision)
            return a, 3
        if self.depthwise:
            # Every chunk uses the same per-channel filters: tile the kernel over the T chunks and
            # run one depthwise conv over all (wrapped) channels, in their own order.
            tiled = jnp.tile(kernel, (1, 1, 1, steps))
            y = jax.lax.conv_general_dilated(
                x,
                tiled,
                window_strides=strides,
                padding=padding,
                dimension_numbers=_DIMENSION_NUMBERS,
                feature_group_count=steps * g_in,
                precision=self.precision,
            )
            _, h_out, w_out, _ = y.shape
            return y.reshape(n, h_out, w_out, steps, g_out), 3
        # General k x k: fold the steps into the batch (time-major) and convolve once.
        _, height, width, _ = x.shape
        xt = jnp.transpose(x.reshape(n, height, width, steps, g_in), (3, 0, 1, 2, 4))
        y = jax.lax.conv_general_dilated(
            xt.reshape(steps * n, height, width, g_in),
            kernel,
            window_strides=strides,
            padding=padding,
            dimension_numbers=_DIMENSION_NUMBERS,
            precision=self.precision,
        )
        return y.reshape(steps, n, *y.shape[1:]), 0
