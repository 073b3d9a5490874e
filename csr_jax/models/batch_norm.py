"""BatchNorm in training mode with its own backward pass, for XLA:CPU.

``flax.linen.BatchNorm`` computes ``y = (x - mean) * (scale * rsqrt(var + eps)) + bias`` and
leaves the gradient to autodiff. On XLA:CPU that gradient materialises ``x - mean`` as a
residual (one full-size tensor per BatchNorm, written in the forward pass and read back) and
runs the chain rule through mean and variance as several separate reductions and elementwise
passes; an activation after it (ReLU6, ReLU, SiLU) stores its own input, the BatchNorm output,
as one more full-size tensor. :class:`FusedBatchNorm` computes the same function -- the same
float32 statistics, ``E[x^2] - E[x]^2`` clipped at 0 as Flax does, the same normalisation
expression, then the activation if it is given one -- and has a ``jax.custom_vjp`` whose backward
pass recomputes the activation's input from ``x`` (nothing but ``x`` is stored), takes the
activation's gradient ``g``, and needs two per-channel reductions, ``sum(g)`` and
``sum(g * (x - mean))`` (``x - mean`` computed inside the reduction, not stored), and ONE
elementwise pass for the input gradient::

    dx = a * g + c0 + c1 * (x - mean),   a = scale * rsqrt(var + eps),
    c0 = (g_mean - a * sum(g)) / n,      c1 = (2 * g_var - scale * rsqrt(var + eps)^3 * sum(g * (x - mean))) / n

(``g_mean``, ``g_var``: cotangents of the batch statistics, zero in a training step, kept so the
function is differentiable as a whole; ``n`` = examples x pixels per channel). It trained the
MobileNetV2-CIFAR step faster on a 2-core CPU (``benchmarks/RESULTS.md`` §10).

Same variables as ``nn.BatchNorm`` (params ``scale``/``bias``, batch_stats ``mean``/``var``), so
checkpoints are interchangeable. The custom backward is used where the depthwise convs use their
CPU path (:func:`csr_jax.depthwise.default_impl` is ``"taps"``: on CPU, or inside
``depthwise.forced_impl("taps")``); on GPU/TPU, and inside ``depthwise.forced_impl("xla")``, the
layer is ``nn.BatchNorm`` unchanged, followed by the activation. Like the depthwise CPU path,
forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not defined for the custom
backward: trace under ``forced_impl("xla")`` for it. Configurations the fused form does not cover
(a ``mask``, ``axis_name``, a feature axis other than the last, no scale or bias, the two-pass
variance, ``force_float32_reductions=False``) also run ``nn.BatchNorm`` unchanged. With a
low-precision ``dtype`` the fused form applies the activation before the cast to ``dtype``,
``nn.BatchNorm`` + activation after it: the same up to that rounding.

In a single-device process with float32 operands and a ReLU or ReLU6 activation, the forward
and backward passes are native C++ kernels (:mod:`csr_jax.native`: two passes over ``x`` each,
statistics summed in float64 over a fixed split, so bitwise repeatable), 1.6x faster than the XLA
fusions for a (32, 32, 32, 192) ReLU6 layer on one core and 1.08x on the MobileNetV2-CIFAR step
(``benchmarks/RESULTS.md`` section 13). Both native calls carry the VJP of the XLA expression they
replace, so gradients of gradients are those of the XLA form. Other cases (SiLU, bf16, several
devices, ``native.disabled()``, no compiler) and BatchNorm without activation (usually followed
by a residual add that XLA fuses the normalisation into) run the XLA form above.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes
from jax import lax

from csr_jax import depthwise, native

Array = jax.Array

__all__ = ["FusedBatchNorm", "batch_moments", "batch_norm_train"]


def batch_moments(x: Array) -> tuple[Array, Array]:
    """Per-channel float32 mean and ``E[x^2] - E[x]^2`` over every axis but the last, computed
    as ``nn.BatchNorm`` computes them; the second is not yet clipped at 0."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = xf.mean(axes)
    return mean, (xf * xf).mean(axes) - mean * mean


def _inverse_std(raw_var: Array, epsilon: float) -> Array:
    """``rsqrt(max(raw_var, 0) + epsilon)``: the variance clipped at 0 as Flax does it."""
    return lax.rsqrt(jnp.maximum(0.0, raw_var) + epsilon)


def _normalize(x, mean, inv, scale, bias):
    return (x - mean) * (inv * scale) + bias


def _forward(x: Array, scale: Array, bias: Array, epsilon: float, activation):
    mean, raw_var = batch_moments(x)
    var = jnp.maximum(0.0, raw_var)
    inv = lax.rsqrt(var + epsilon)
    y = _normalize(x, mean, inv, scale, bias)
    if activation is not None:
        y = activation(y)
    return (y, mean, var), (x, mean, raw_var, inv, scale, bias)


def batch_norm_train(
    x: Array,
    scale: Array,
    bias: Array,
    epsilon: float,
    activation: Callable[[Array], Array] | None = None,
) -> tuple[Array, Array, Array]:
    """Normalises ``x`` (..., C) with its own batch statistics over every axis but the last, then
    applies the elementwise ``activation`` (if any).

    Returns ``(y, mean, var)``: ``y`` in float32 (or wider, as ``x``, ``scale`` and ``bias``
    promote), the batch mean and the biased batch variance in float32. Without activation ``y``
    equals ``nn.BatchNorm``'s training output before its final cast to the module dtype.
    """
    if _native_fits(x, scale, bias, activation):
        return _native_train(x, scale, bias, epsilon, activation)
    return _xla_train(x, scale, bias, epsilon, activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _xla_train(x, scale, bias, epsilon, activation):
    return _forward(x, scale, bias, epsilon, activation)[0]


def _unshared(v: Array) -> Array:
    """``v`` behind an optimization barrier: an expression of it is not merged with the same
    expression of ``v`` elsewhere (``benchmarks.depthwise_ab`` swaps this for the identity)."""
    return lax.optimization_barrier(v)


def _backward(epsilon, activation, residuals, cotangents):
    del epsilon  # inv holds it
    x, mean, raw_var, inv, scale, bias = residuals
    g_y, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    g = g_y.astype(mean.dtype)
    if activation is not None:
        # The activation's input is recomputed from x rather than stored: one tensor fewer
        # written in the forward pass, and XLA fuses the recomputation into the passes below.
        _, activation_vjp = jax.vjp(activation, _normalize(x, mean, inv, scale, bias))
        (g,) = activation_vjp(g)
    xf = x.astype(mean.dtype)
    sum_g = g.sum(axes)
    # The mean goes through an optimization barrier here, so that this x - mean is not merged
    # with the other uses of x - mean (the forward normalisation, dx below): shared, XLA:CPU
    # stored it as one more full-size tensor for this reduction (its reductions fuse a producer
    # only when they are its sole consumer); unshared, it is computed inside the reduction. The
    # value is unchanged. (The same for the activation's gradient does not pay: a select does
    # not fuse into the reduction, and the mask written with sign/multiply/add fused but made
    # the step 15% slower.)
    sum_gc = (g * (xf - _unshared(mean))).sum(axes)
    a = inv * scale
    c0 = (g_mean - a * sum_g) / n
    # The variance is clipped at 0: no gradient flows through it where E[x^2] - E[x]^2 <= 0.
    c1 = jnp.where(raw_var > 0, (2.0 * g_var - scale * inv**3 * sum_gc) / n, 0.0)
    dx = a * g + c0 + c1 * (xf - mean)
    return (
        dx.astype(x.dtype),
        (inv * sum_gc).astype(scale.dtype),
        sum_g.astype(bias.dtype),
    )


_xla_train.defvjp(_forward, _backward)


# The native form (csr_jax.native): the same function, its forward and backward pass each two
# passes of C++ over x. Its two calls are themselves differentiable, each with the VJP of the XLA
# expression it replaces, so gradients of gradients hold as with the XLA form.


def _native_fits(x: Array, scale: Array, bias: Array, activation) -> bool:
    """Whether the native kernels take this call: float32 operands, an activation they know, and
    the kernels usable here (``native.enabled``: on, built, one CPU device)."""
    return (
        x.ndim >= 2
        and x.size > 0
        and all(v.dtype == jnp.float32 for v in (x, scale, bias))
        and any(activation is a for a in native.ACTIVATIONS)
        and native.enabled()
    )


def _code(activation) -> int:
    return next(c for a, c in native.ACTIVATIONS.items() if a is activation)


def _xla_outputs(epsilon, activation, x, scale, bias):
    """``(y, mean, raw_var)`` as :func:`_forward` computes them (the VJP of the native forward)."""
    (y, mean, _), (_, _, raw_var, _, _, _) = _forward(x, scale, bias, epsilon, activation)
    return y, mean, raw_var


def _with_xla_vjp(native_fn, xla_fn):
    """``native_fn(epsilon, activation, *arrays)`` as a ``custom_vjp`` whose VJP is that of
    ``xla_fn``, the XLA expression it computes: reached only when differentiating a gradient (the
    first derivative of the layer is :func:`_native_backward` itself)."""
    f = jax.custom_vjp(native_fn, nondiff_argnums=(0, 1))

    def fwd(epsilon, activation, *args):
        return f(epsilon, activation, *args), args

    def bwd(epsilon, activation, args, cotangent):
        _, vjp = jax.vjp(functools.partial(xla_fn, epsilon, activation), *args)
        return vjp(cotangent)

    f.defvjp(fwd, bwd)
    return f


def _native_outputs_call(epsilon, activation, x, scale, bias):
    c = x.shape[-1]
    y, mean, raw_var = native.batch_norm_forward(
        x.reshape(-1, c), scale, bias, epsilon, _code(activation)
    )
    return y.reshape(x.shape), mean, raw_var


_native_outputs = _with_xla_vjp(_native_outputs_call, _xla_outputs)


def _native_forward(x, scale, bias, epsilon, activation):
    y, mean, raw_var = _native_outputs(epsilon, activation, x, scale, bias)
    return (y, mean, jnp.maximum(0.0, raw_var)), (x, mean, raw_var, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _native_train(x, scale, bias, epsilon, activation):
    return _native_forward(x, scale, bias, epsilon, activation)[0]


def _native_train_bwd(epsilon, activation, residuals, cotangents):
    return _native_backward(epsilon, activation, *residuals, *cotangents)


_native_train.defvjp(_native_forward, _native_train_bwd)


def _xla_backward_of(epsilon, activation, x, mean, raw_var, scale, bias, g_y, g_mean, g_var):
    """:func:`_backward` as a function of its inputs (the VJP of the native backward)."""
    inv = _inverse_std(raw_var, epsilon)
    residuals = (x, mean, raw_var, inv, scale, bias)
    return _backward(epsilon, activation, residuals, (g_y, g_mean, g_var))


def _native_backward_call(epsilon, activation, x, mean, raw_var, scale, bias, g_y, g_mean, g_var):
    c = x.shape[-1]
    dx, sum_g, sum_gc = native.batch_norm_backward(
        x.reshape(-1, c),
        g_y.reshape(-1, c).astype(jnp.float32),
        mean,
        raw_var,
        scale,
        bias,
        g_mean.astype(jnp.float32),
        g_var.astype(jnp.float32),
        epsilon,
        _code(activation),
    )
    inv = _inverse_std(raw_var, epsilon)
    return dx.reshape(x.shape), inv * sum_gc, sum_g


_native_backward = _with_xla_vjp(_native_backward_call, _xla_backward_of)


class FusedBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` whose training-mode gradient is :func:`batch_norm_train`'s on CPU,
    optionally followed by an elementwise activation.

    Same attributes, variables and outputs as ``nn.BatchNorm``, plus ``activation`` (default
    None): ``FusedBatchNorm(activation=nn.relu6)(x)`` is ``nn.relu6(nn.BatchNorm()(x))``, with the
    activation's gradient taken inside the fused backward. See the module docstring for when the
    fused form runs.
    """

    activation: Callable[[Array], Array] | None = None

    def _fusable(self, x: Array, mask: Array | None) -> bool:
        return (
            mask is None
            and self.axis_name is None
            and self.axis in (-1, x.ndim - 1)
            and self.use_scale
            and self.use_bias
            and self.use_fast_variance
            and self.force_float32_reductions
            and depthwise.default_impl() == "taps"
        )

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        training = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if not (training and not self.is_initializing() and self._fusable(x, mask)):
            y = super().__call__(x, use_running_average, mask=mask)
            return y if self.activation is None else self.activation(y)
        features = (x.shape[-1],)
        ra_mean = self.variable(
            "batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features
        )
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.activation)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return jnp.asarray(y, dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))
