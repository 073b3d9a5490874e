"""CSR-Conv: Channel-Split Recurrent Convolution (Wu et al., WACV 2023) as a Flax linen layer.

The layer splits the input channels into ``steps`` (T) consecutive chunks and runs a recurrence
over them whose two convolution kernels are shared by every step, so the parameter count falls
roughly as 1/T^2 against an ordinary convolution with the same channels. The exact semantics
(channel wrap-around, the first step without a hidden term, the Euler-step update with the
learnable scalars alpha and beta) are those of the authors' reference code (tests/reference_numpy.py
restates them as an independent float64 implementation).

Why the computation is organised the way it is (measured in ``benchmarks/RESULTS.md``):

* The input path ``a_t = U * x_t + b_U`` has no dependence between steps, so all T chunks go
  through ONE op. For 1x1 kernels (any stride) it is a plain contraction over the channels in
  their natural ``(N, H, W, T, g)`` order -- no transpose, no slices of the input, and XLA runs
  a dot much faster than a 1x1 ``conv_general_dilated``; depthwise kernels are tiled over the
  T chunks (one depthwise conv, natural order too); other k x k kernels fold T into the batch
  (time-major).
* For 1x1 kernels the first hidden term needs no ``h_1``: ``h_1 = U x_1 + b_U`` is linear, so
  ``r_2 = V h_1 + b_V = (U V) x_1 + (V b_U + b_V)``, one dot of g_in x g_out instead of
  g_out x g_out per pixel. On CPU, where the dots dominate the step, layers whose chunks widen
  (g_in < g_out, MobileNetV2's T=3 expansion: a sixth of that step's work) compute it so
  (:func:`_composed_r_2`); same function to float rounding, same parameters.
* On CPU, float32 widening 1x1 layers leave XLA altogether: :mod:`csr_jax.pointwise_native` runs
  the whole layer (composed r_2 included) as one native op that computes every step on a tile of
  pixels in cache and writes the output once, without the memory-bound passes between XLA's
  dots (the steps' split and join, the update and its recomputation).
* Only the hidden path ``r_t = V * h_{t-1} + b_V`` is sequential. For T <= 8 (every listed preset) it
  is unrolled in Python by default: T - 1 <= 7 steps compile to straight-line code that XLA
  fuses freely (the update ``alpha*relu(a+r) + (1-beta)*r`` joins the producer/consumer
  fusions), where a rolled scan is a while loop that slices its input and writes its
  stacked output with dynamic indices every step, in the forward and again in the backward
  pass, with no fusion across iterations (on XLA:CPU a layer with a 3x3 hidden conv ran 7-11x
  slower rolled). Longer recurrences (and an explicit int ``unroll``) run the rolled form, a
  ``flax.linen.scan`` over the hidden cell, to bound compile time and program size.
* The steps are cut from ``a`` with ONE split (its gradient is one concatenate; per-step slices
  would each turn into a zero-padded full-size gradient, all added up), and their outputs are
  joined with ONE concatenate over the channels, which is the layer's output order, so no
  re-interleaving transpose is needed at the end. (Stacking them on a new ``(N, H, W, T, g)``
  axis and reshaping computes the same, but XLA:CPU then fused the stack into consumers of
  both shapes and wrote the layer's output twice: the T=3 expand layer with its BatchNorm
  trained 10% slower, ``benchmarks/RESULTS.md`` section 11.)
* A 1x1 hidden kernel is applied as a dot for the same reason as the input path.
* The math is pure functions of the parameters (:func:`_forward`, :func:`_input_path`,
  :func:`_hidden_step`, :func:`_hidden_path`), shared by this linen layer and by the native NNX
  layer ``csr_jax.nnx.CSRConv``; the modules only create parameters and pick how the steps run.
* The hidden parameters live in ONE cell module, ``_HiddenCell`` under ``hidden/``. The unrolled
  form reads them from it; the rolled form runs the cell in ``flax.linen.scan`` with the
  parameters broadcast (``variable_broadcast='params'``), so both forms have the same parameter
  tree and take each other's variables.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from csr_jax import pointwise_native
from csr_jax.depthwise import default_impl, dense_conv, depthwise_conv

Array = jax.Array
Dtype = Any
PaddingLike = str | int | Sequence[int | tuple[int, int]]
Initializer = Callable[..., Array]

__all__ = ["CSRConv", "csr_group_sizes", "reference_bias_init", "reference_kernel_init"]


#: PyTorch's default conv init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
#: Flax computes fan_in of an HWIO kernel as kh*kw*in, which is also right for depthwise (in=1).
reference_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform"
)


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


def _is_int(value: Any) -> bool:
    """True for Python and NumPy integers (``np.int64`` from a config or an array shape), False
    for booleans: ``True`` is an ``int`` to Python, but ``steps=True`` is a mistake, not T=1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``, or a ValueError that says what was wrong."""
    if isinstance(value, bool):
        raise ValueError(
            f"CSRConv: {name} must be an int >= {minimum}, got the bool {value!r}; pass an int "
            f"(a bool is not taken as {int(value)})."
        )
    if not _is_int(value) or value < minimum:
        raise ValueError(f"CSRConv: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if _is_int(value):
        pair = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        pair = tuple(value)
        if len(pair) == 1:
            pair = (pair[0], pair[0])
    else:
        pair = ()
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(
            f"CSRConv: {name} must be a positive int or a pair of positive ints "
            f"(CSRConv is 2-D, NHWC; booleans are refused), got {value!r}."
        )
    return int(pair[0]), int(pair[1])


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
    if _is_int(padding):
        if padding < 0:
            raise ValueError(f"CSRConv: padding must be >= 0, got {padding}.")
        return [(int(padding), int(padding))] * 2
    if isinstance(padding, Sequence) and len(padding) == 2:
        pads = []
        for p in padding:
            if _is_int(p) and p >= 0:
                pads.append((int(p), int(p)))
            elif isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) and v >= 0 for v in p):
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


class _Spec(NamedTuple):
    """A layer's checked configuration, as plain Python values (what the pure functions take)."""

    features: int
    steps: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: str | tuple[tuple[int, int], ...]
    g_in: int
    g_out: int
    #: How the hidden steps run: None = straight-line code, an int = a rolled scan with that unroll.
    scan_unroll: int | None


def _is_pointwise(spec: _Spec, depthwise: bool) -> bool:
    """A dense 1x1 layer without padding: its convolutions are contractions over the channels
    (a strided one reads every s-th pixel), which the input path and the composed ``r_2`` run as
    dots."""
    return not depthwise and spec.kernel_size == (1, 1) and _is_zero_padding(spec.padding)


def _resolve(
    c_in: Any,
    features: Any,
    kernel_size: Any,
    steps: Any,
    strides: Any,
    padding: Any,
    depthwise: bool,
    unroll: Any,
) -> _Spec:
    """Checks a layer configuration against ``c_in`` input channels; shared by the linen and NNX
    layers, so both accept (NumPy integers) and refuse (booleans, bad sizes) the same inputs."""
    steps = _check_int(steps, "steps")
    features = _check_int(features, "features")
    c_in = _check_int(c_in, "in_features (the input channels)")
    if steps > c_in:
        raise ValueError(
            f"CSRConv: steps={steps} exceeds the input channels ({c_in}); every step needs "
            f"at least one channel, so use steps <= {c_in}."
        )
    if steps > features:
        raise ValueError(
            f"CSRConv: steps={steps} exceeds features ({features}); every step needs at "
            f"least one output channel, so use steps <= {features}."
        )
    if depthwise and c_in != features:
        raise ValueError(
            f"CSRConv: depthwise=True needs as many input as output channels, got {c_in} in and "
            f"{features} out; use depthwise=False or features={c_in}."
        )
    kernel_size = _pair(kernel_size, "kernel_size")
    strides = _pair(strides, "strides")
    if steps > 1 and any(k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"CSRConv: kernel_size {kernel_size} has an even side; the hidden convolution "
            "(stride 1, (k-1)//2 padding) only preserves the spatial size for odd kernels."
        )
    if unroll is not None and (not _is_int(unroll) or unroll < 1):
        raise ValueError(
            f"CSRConv: unroll must be None (fully unroll up to {FULL_UNROLL_MAX_STEPS} steps) or an "
            f"int >= 1 (scan unroll factor), got {unroll!r}."
        )
    # Straight-line code for unroll=None up to the limit, and whenever the unroll factor covers
    # all T - 1 steps (a scan unrolled that far computes the same, through a one-trip loop).
    if unroll is None:
        scan_unroll = None if steps <= FULL_UNROLL_MAX_STEPS else 1
    else:
        scan_unroll = None if unroll >= steps - 1 else int(unroll)
    padding = _canonical_padding(padding)
    if not isinstance(padding, str):
        padding = tuple(padding)
    g_in, g_out = csr_group_sizes(c_in, features, steps)
    if depthwise:
        g_in = g_out  # c_in == features, so ceil(c_in/T) == ceil(features/T)
    return _Spec(features, steps, kernel_size, strides, padding, g_in, g_out, scan_unroll)


def _kernel_shapes(spec: _Spec, depthwise: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """HWIO shapes of the input kernel U (g_in -> g_out) and the hidden kernel V (g_out -> g_out)."""
    kh, kw = spec.kernel_size
    return (
        (kh, kw, 1 if depthwise else spec.g_in, spec.g_out),
        (kh, kw, 1 if depthwise else spec.g_out, spec.g_out),
    )


def _fan_in(kernel_shape: Sequence[int]) -> int:
    """kh * kw * in of an HWIO kernel: the fan-in of the reference's bias init."""
    kh, kw, cin, _ = kernel_shape
    return kh * kw * cin


class _HiddenCell(nn.Module):
    """One hidden step, holding the hidden path's parameters shared by all steps:
    ``hidden_kernel`` (V), ``alpha``, ``beta`` and ``hidden_bias`` (b_V).

    The unrolled form calls :meth:`weights` and runs :func:`_hidden_path` on them; the rolled
    form runs ``__call__`` (carry ``h``, input ``a_t``) in ``flax.linen.scan`` with the
    parameters broadcast, so both forms create the same parameters under the same name.
    """

    spec: _Spec
    use_bias: bool
    depthwise: bool
    dtype: Dtype
    param_dtype: Dtype
    precision: Any
    kernel_init: Initializer
    bias_init: Initializer | None

    def setup(self) -> None:
        _, shape = _kernel_shapes(self.spec, self.depthwise)
        self.kernel = self.param("hidden_kernel", self.kernel_init, shape, self.param_dtype)
        self.alpha = self.param("alpha", nn.initializers.constant(0.5), (), self.param_dtype)
        self.beta = self.param("beta", nn.initializers.constant(0.5), (), self.param_dtype)
        self.bias = None
        if self.use_bias:
            bias_init = self.bias_init or reference_bias_init(_fan_in(shape))
            self.bias = self.param("hidden_bias", bias_init, (self.spec.g_out,), self.param_dtype)

    def weights(self) -> tuple[Array, Array | None, Array, Array]:
        """``(kernel, bias, alpha, beta)`` in the computation dtype."""
        kernel, bias, alpha, beta = promote_dtype(
            self.kernel, self.bias, self.alpha, self.beta, dtype=self.dtype
        )
        return kernel, bias, alpha, beta

    def __call__(self, h: Array, a_t: Array) -> tuple[Array, Array]:
        h = _hidden_step(
            h, a_t, *self.weights(), depthwise=self.depthwise, precision=self.precision
        )
        return h, h


def _matmul(x: Array, w: Array, precision: Any) -> Array:
    """``x @ w`` over the last axis, as ONE 2-D matrix product of all leading positions.

    Written as a 2-D dot rather than ``einsum('nhwc,cd->nhwd')``: the gradient of the einsum
    contracts over three axes and XLA:CPU then transposes the operands; the 2-D form ran the
    forward+backward of a 96 -> 576 1x1 layer 2x faster (``benchmarks/RESULTS.md``).
    """
    out = jnp.dot(x.reshape(-1, x.shape[-1]), w, precision=precision)
    return out.reshape(*x.shape[:-1], w.shape[-1])


def _hidden_step(
    h: Array,
    a: Array,
    kernel: Array,
    bias: Array | None,
    alpha: Array,
    beta: Array,
    *,
    depthwise: bool,
    precision: Any,
) -> Array:
    """``h_t = alpha * relu(a_t + r_t) + (1 - beta) * r_t`` with ``r_t = V * h_{t-1} + b_V``."""
    kh, kw, _, g = kernel.shape
    pads = [((kh - 1) // 2, (kh - 1) // 2), ((kw - 1) // 2, (kw - 1) // 2)]
    if (kh, kw) == (1, 1) and not depthwise:
        # A 1x1 conv is a contraction; XLA runs it faster as a dot than as a conv.
        r = _matmul(h, kernel[0, 0], precision)
    elif depthwise:
        # Shifted taps on CPU, the XLA conv on GPU/TPU (csr_jax.depthwise).
        r = depthwise_conv(h, kernel, (1, 1), pads, precision=precision)
    else:
        # XLA's conv; on CPU with its kernel gradient summed over batch chunks (csr_jax.depthwise).
        r = dense_conv(h, kernel, (1, 1), pads, precision=precision)
    if bias is not None:
        r = r + bias
    return _update(a, r, alpha, beta)


def _update_formula(a: Array, r: Array, alpha: Array, beta: Array) -> Array:
    """``alpha * relu(a + r) + (1 - beta) * r``."""
    return alpha * jax.nn.relu(a + r) + (1 - beta) * r


#: The hidden update, recomputed in the backward pass from ``a`` and ``r`` (both kept anyway: they
#: are the outputs of the step's convolutions) instead of autodiff storing ``relu(a + r)`` for
#: alpha's gradient: one full-size tensor less per step; the CSR MobileNetV2-CIFAR train step
#: planned 8% less memory on CPU, at the same speed (``benchmarks/RESULTS.md`` section 11).
_update = jax.checkpoint(_update_formula)


def _hidden_path(
    a: Array,
    time_axis: int,
    kernel: Array,
    bias: Array | None,
    alpha: Array,
    beta: Array,
    *,
    depthwise: bool,
    precision: Any,
    unroll: int | None,
    r_2: SecondHiddenInput | None = None,
) -> Array:
    """All T steps from the input-path outputs ``a`` (T along ``time_axis``); returns
    ``(N, H', W', T * g)`` = h_1 .. h_T concatenated over the channels.

    ``r_2``, when given, computes the second step's hidden term ``r_2 = V * h_1 + b_V`` from the
    hidden weights another way (:func:`_composed_r_2`); the unrolled form uses it, the rolled
    form (which runs every step through one cell) does not.

    ``unroll=None`` runs the steps as straight-line Python; an int runs ``lax.scan`` with that
    unroll factor (the NNX layer's rolled form; the linen layer's rolled form is ``nn.scan`` over
    ``_HiddenCell``, with the same step and the same loop inputs and outputs,
    :func:`_scan_inputs`/:func:`_scan_outputs`). ``a``: see :func:`_steps_of`.
    """
    step = functools.partial(
        _hidden_step,
        kernel=kernel,
        bias=bias,
        alpha=alpha,
        beta=beta,
        depthwise=depthwise,
        precision=precision,
    )
    if unroll is None:
        a_steps = _steps_of(a, time_axis)
        hs = [a_steps[0]]  # h_1 = a_1
        rest = a_steps[1:]
        if r_2 is not None:
            hs.append(_update(rest[0], r_2(kernel, bias), alpha, beta))
            rest = rest[1:]
        for a_t in rest:
            hs.append(step(hs[-1], a_t))
        return _join_steps(hs)

    def body(h, a_t):
        h = step(h, a_t)
        return h, h

    first, rest = _scan_inputs(a, time_axis)
    _, hs = jax.lax.scan(body, first, rest, unroll=unroll)
    return _scan_outputs(first, hs)


#: ``(hidden_kernel, hidden_bias, alpha, beta)`` in the computation dtype (bias None without bias).
HiddenWeights = tuple[Array, Array | None, Array, Array]

#: ``r_2(hidden_kernel, hidden_bias)``: the second step's hidden term from the hidden weights.
SecondHiddenInput = Callable[[Array, Array | None], Array]


def _composed_r_2(
    x_1: Array, kernel: Array, bias: Array | None, precision: Any
) -> SecondHiddenInput:
    """``r_2 = V h_1 + b_V`` of a 1x1 layer as ONE dot on the first input chunk.

    ``h_1 = x_1 U + b_U`` has no nonlinearity, so for 1x1 kernels
    ``r_2 = x_1 (U V) + (b_U V + b_V)``: the same function (to float rounding), with the
    product ``U V`` (g_in x g_out, parameter-sized) formed once. Per pixel that dot costs
    g_in * g_out multiply-adds instead of g_out^2, in the forward pass and in both gradients,
    which pays where g_in < g_out: MobileNetV2's T=3 expansion (g_in = C/3, g_out = 2C) does a
    sixth of that step's work. Only the second step composes; later steps follow a ReLU.
    """

    def r_2(hidden_kernel: Array, hidden_bias: Array | None) -> Array:
        v = hidden_kernel[0, 0]
        r = _matmul(x_1, jnp.dot(kernel[0, 0], v, precision=precision), precision)
        offset = None if bias is None else jnp.dot(bias, v, precision=precision)
        if hidden_bias is not None:
            offset = hidden_bias if offset is None else offset + hidden_bias
        return r if offset is None else r + offset

    return r_2


def _composes_r_2(spec: _Spec, depthwise: bool) -> bool:
    """Whether :func:`_composed_r_2` runs: 1x1 dense layers with T >= 2 whose chunks widen
    (g_in < g_out, where the composed dot is the cheaper one), on the CPU path (the dots'
    cost dominates there; GPU/TPU keep the step-by-step form they were measured with)."""
    return (
        _is_pointwise(spec, depthwise)
        and spec.steps >= 2
        and spec.g_in < spec.g_out
        and spec.scan_unroll is None
        and default_impl() == "taps"
    )


def _join_steps(hs: list[Array]) -> Array:
    """``concat(h_1, ..., h_T)`` over the channels: ONE concatenate (see the module docstring)."""
    return jnp.concatenate(hs, axis=-1)


def _steps_of(a: Array, time_axis: int) -> list[Array]:
    """The input path's outputs ``a`` (T along ``time_axis``) as the list ``[a_1, ..., a_T]``,
    cut with ONE split rather than per-step slices: the gradient of a split is one concatenate,
    that of T slices is T zero-padded full-size tensors added up.
    """
    steps = a.shape[time_axis]
    return [jnp.squeeze(c, time_axis) for c in jax.lax.split(a, [1] * steps, axis=time_axis)]


def _scan_inputs(a: Array, time_axis: int) -> tuple[Array, Array]:
    """A rolled loop's carry ``h_1 = a_1`` and its inputs ``a_2 .. a_T`` stacked on axis 0."""
    first, rest = jax.lax.split(a, [1, a.shape[time_axis] - 1], axis=time_axis)
    return jnp.squeeze(first, time_axis), jnp.moveaxis(rest, time_axis, 0)


def _scan_outputs(first: Array, hs: Array) -> Array:
    """``h_1`` and a loop's stacked ``(T-1, N, H', W', g)`` outputs as ``(N, H', W', T * g)``,
    the steps concatenated over the channels."""
    n, height, width, _ = first.shape
    joined = jnp.concatenate([first[None], hs], axis=0).transpose(1, 2, 3, 0, 4)
    return joined.reshape(n, height, width, -1)


def _forward(
    x: Array,
    kernel: Array,
    bias: Array | None,
    spec: _Spec,
    *,
    depthwise: bool,
    precision: Any,
    dtype: Dtype | None,
    hidden: Callable[[Array, int, SecondHiddenInput | None], Array],
    hidden_weights: Callable[[Dtype], HiddenWeights],
) -> Array:
    """The whole layer on NHWC ``x`` given the input path's parameters. ``hidden(a, time_axis,
    r_2)`` runs the T - 1 hidden steps on the input path's outputs (see :func:`_hidden_path`),
    ``hidden_weights(dtype)`` gives the hidden parameters for the native widening 1x1 layer
    (:mod:`csr_jax.pointwise_native`); they are the only parts the linen and NNX layers supply
    differently (where the hidden parameters live). One of the two is called."""
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=dtype)
    if spec.steps > 1 and pointwise_native.applies(
        pointwise=_is_pointwise(spec, depthwise),
        steps=spec.steps,
        g_in=spec.g_in,
        g_out=spec.g_out,
        features=spec.features,
        rolled=spec.scan_unroll is not None,
        dtypes=(x.dtype, kernel.dtype),
    ):
        return pointwise_native.pointwise_csr(
            x,
            kernel,
            bias,
            *hidden_weights(x.dtype),
            steps=spec.steps,
            features=spec.features,
            strides=spec.strides,
        )
    x = _wrap_channels(x, spec.steps * spec.g_in)

    # Input path: a holds a_1..a_T along `time_axis`.
    a, time_axis = _input_path(x, kernel, spec, depthwise=depthwise, precision=precision)
    if bias is not None:
        a = a + bias
    if spec.steps == 1:
        return _steps_of(a, time_axis)[0][..., : spec.features]

    r_2 = None
    if _composes_r_2(spec, depthwise):
        x_1 = x[:, :: spec.strides[0], :: spec.strides[1], : spec.g_in]
        r_2 = _composed_r_2(x_1, kernel, bias, precision)
    # concat(h_1, ..., h_T) over the channels, cut to the layer's width.
    return hidden(a, time_axis, r_2)[..., : spec.features]


def _wrap_channels(x: Array, width: int) -> Array:
    """The channel wrap-around (docs/csr_conv.md section 2): ``x`` extended over its last axis
    with copies of itself from its first channel on, to exactly ``width >= C_in`` channels."""
    c_in = x.shape[-1]
    if width == c_in:
        return x
    return jnp.concatenate([x] * -(-width // c_in), axis=-1)[..., :width]


def _check_input(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"CSRConv expects NHWC input of rank 4 (batch, height, width, channels), got shape "
            f"{x.shape}; add a batch axis with x[None] for a single image."
        )


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
        ``steps <= FULL_UNROLL_MAX_STEPS`` (8), a rolled ``nn.scan`` over the hidden cell beyond.
        An int n >= 1: an ``nn.scan`` with unroll factor n, so ``unroll=1`` is a rolled loop (one
        step per iteration) and ``n >= steps - 1`` unrolls it fully (straight-line code). All
        forms share one parameter tree (``hidden/...``). The default is not 1 because the
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

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the layer to NHWC ``x``; returns ``(N, H', W', features)``."""
        _check_input(x)
        spec = _resolve(
            x.shape[-1],
            self.features,
            self.kernel_size,
            self.steps,
            self.strides,
            self.padding,
            self.depthwise,
            self.unroll,
        )
        u_shape, _ = _kernel_shapes(spec, self.depthwise)
        kernel = self.param("input_kernel", self.kernel_init, u_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param(
                "input_bias",
                self.bias_init or reference_bias_init(_fan_in(u_shape)),
                (spec.g_out,),
                self.param_dtype,
            )

        def hidden_cell(dtype: Dtype) -> functools.partial:
            return functools.partial(
                _HiddenCell,
                spec=spec,
                use_bias=self.use_bias,
                depthwise=self.depthwise,
                dtype=dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                name="hidden",
            )

        def hidden(a: Array, time_axis: int, r_2: SecondHiddenInput | None) -> Array:
            cell = hidden_cell(a.dtype)
            if spec.scan_unroll is None:
                return _hidden_path(
                    a,
                    time_axis,
                    *cell().weights(),
                    depthwise=self.depthwise,
                    precision=self.precision,
                    unroll=None,
                    r_2=r_2,
                )
            # The rolled form: the cell in nn.scan, its parameters broadcast to every step.
            scan = nn.scan(
                _HiddenCell,
                variable_broadcast="params",
                split_rngs={"params": False},
                unroll=spec.scan_unroll,
            )
            first, rest = _scan_inputs(a, time_axis)
            _, hs = scan(**cell.keywords)(first, rest)
            return _scan_outputs(first, hs)

        return _forward(
            x,
            kernel,
            bias,
            spec,
            depthwise=self.depthwise,
            precision=self.precision,
            dtype=self.dtype,
            hidden=hidden,
            hidden_weights=lambda dtype: hidden_cell(dtype)().weights(),
        )


def _input_path(
    x: Array, kernel: Array, spec: _Spec, *, depthwise: bool, precision: Any
) -> tuple[Array, int]:
    """``U * x_t`` for every step on the wrapped input; returns ``(a, time_axis)``.

    ``a`` is ``(N, H', W', T, g_out)`` (time_axis 3, the channels' own order) for 1x1 and
    depthwise kernels, and ``(T, N, H', W', g_out)`` (time_axis 0) for other k x k kernels.
    """
    n, _, _, _ = x.shape
    steps, strides, padding, g_in, g_out = (
        spec.steps,
        spec.strides,
        spec.padding,
        spec.g_in,
        spec.g_out,
    )
    if _is_pointwise(spec, depthwise):
        # XLA runs a 1x1 conv much faster as a dot than as a conv.
        if strides != (1, 1):
            x = x[:, :: strides[0], :: strides[1], :]
        # One dot on all chunks; they stay in place, no transpose, and the input is not sliced.
        _, height, width, _ = x.shape
        return _matmul(x.reshape(n, height, width, steps, g_in), kernel[0, 0], precision), 3
    if depthwise:
        # Every chunk uses the same per-channel filters: tile the kernel over the T chunks and
        # run one depthwise conv over all (wrapped) channels, in their own order (shifted taps
        # on CPU, the XLA conv on GPU/TPU: csr_jax.depthwise).
        tiled = jnp.tile(kernel, (1, 1, 1, steps))
        y = depthwise_conv(x, tiled, strides, padding, precision=precision)
        _, h_out, w_out, _ = y.shape
        return y.reshape(n, h_out, w_out, steps, g_out), 3
    # General k x k: fold the steps into the batch (time-major) and convolve once.
    _, height, width, _ = x.shape
    xt = jnp.transpose(x.reshape(n, height, width, steps, g_in), (3, 0, 1, 2, 4))
    y = dense_conv(
        xt.reshape(steps * n, height, width, g_in), kernel, strides, padding, precision=precision
    )
    return y.reshape(steps, n, *y.shape[1:]), 0
