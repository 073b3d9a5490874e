"""Widening 1x1 CSR layers on the CPU as ONE native op: forward and backward in C++, tile by tile.

Why: a 1x1 CSR layer in XLA is a few dots with memory-bound passes between them (the steps cut
out of the input path's output, the hidden update, its recomputation in the backward pass, the
steps joined into the output and their gradients split again). The ordinary 1x1 conv has none of
them, and in the CSR MobileNetV2-CIFAR train step they cost as much as the dots: its T=3 expand
layers trained 0.7-0.8x as fast as the ordinary net's. The native op
(``csr_jax/native/pointwise_csr.cc``) runs all T steps of a tile of pixels in cache, writes the
output once and keeps only the hidden terms r_t for the backward pass; the same layer's forward +
backward ran 1.3-3.8x faster than the XLA form on a 2-core CPU, the CSR MobileNetV2-CIFAR train
step 1.19x (``benchmarks/RESULTS.md`` section 15).

When it runs (:func:`applies`): a dense 1x1 layer without padding (any stride: the input is
subsampled first), T >= 2, only the last step cut by the output width, chunks that widen
(``g_in < g_out``: the expand layers; the op recomputes the cheap input path in the backward pass
instead of storing it, and composes r_2 from ``x_1``, both of which pay only there), the
straight-line form (``unroll`` covering every step), float32 input and parameters, the CPU path
(``csr_jax.depthwise.default_impl() == "taps"``, as for the other native ops;
``forced_impl("xla")`` turns it off) and the native kernels usable (``csr_jax.native.enabled``:
CPU, one device, built, not switched off). Everything else runs the XLA form in
``csr_jax.csr_conv``.

Same parameters, same function to float rounding (``tests/test_pointwise_native.py``). Gradients
of gradients are those of the XLA form: the native backward carries the VJP of the XLA
expression it replaces. Forward-mode differentiation is not defined (as for the other native ops).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from csr_jax import depthwise, native

Array = jax.Array

__all__ = ["applies", "pointwise_csr"]


def applies(
    *, pointwise: bool, steps: int, g_in: int, g_out: int, features: int, rolled: bool, dtypes
) -> bool:
    """Whether a layer with this configuration runs the native op (see the module docstring)."""
    return (
        pointwise
        and steps >= 2
        and g_in < g_out
        # h_1 .. h_{T-1} whole in the output (only the last step cut), where the op reads them
        # back; always so unless T is close to C_out (e.g. C_out = 5, T = 4: g_out = 2, the
        # third step keeps one channel).
        and (steps - 1) * g_out <= features
        and not rolled
        and all(jnp.dtype(d) == jnp.float32 for d in dtypes)
        and depthwise.default_impl() == "taps"
        and native.enabled()
    )


def _xla_layer(x, u, v, bu, bv, alpha, beta, steps, c_out):
    """The same layer in the XLA form, on (P, C_in) ``x``: what the native op's gradients of
    gradients differentiate."""
    from csr_jax import csr_conv  # the XLA form lives there, and that module imports this one

    g_in = u.shape[0]
    xe = csr_conv._wrap_channels(x, steps * g_in)
    a = csr_conv._matmul(xe.reshape(-1, steps, g_in), u, None) + bu
    hs = csr_conv._hidden_path(
        a,
        1,
        v[None, None],
        bv,
        alpha[0],
        beta[0],
        depthwise=False,
        precision=None,
        unroll=None,
    )
    return hs[:, :c_out]


def _xla_grads(x, u, v, bu, bv, alpha, beta, dy, steps, c_out):
    _, vjp = jax.vjp(
        functools.partial(_xla_layer, steps=steps, c_out=c_out), x, u, v, bu, bv, alpha, beta
    )
    return vjp(dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11))
def _grads(x, u, v, bu, bv, alpha, beta, y, r, dy, steps, c_out):
    """The native backward pass; ``y`` and ``r`` are the forward pass's results, read back."""
    del c_out
    return native.pointwise_csr_backward(x, u, v, bu, bv, alpha, beta, y, r, dy, steps)


def _grads_fwd(x, u, v, bu, bv, alpha, beta, y, r, dy, steps, c_out):
    out = _grads(x, u, v, bu, bv, alpha, beta, y, r, dy, steps, c_out)
    return out, (x, u, v, bu, bv, alpha, beta, y, r, dy)


def _grads_bwd(steps, c_out, residuals, cotangents):
    x, u, v, bu, bv, alpha, beta, y, r, dy = residuals
    _, vjp = jax.vjp(
        functools.partial(_xla_grads, steps=steps, c_out=c_out),
        x,
        u,
        v,
        bu,
        bv,
        alpha,
        beta,
        dy,
    )
    *params, g_dy = vjp(tuple(cotangents))
    # y and r are functions of the other operands, and the XLA expression differentiates
    # through that dependence itself: they get no cotangent of their own.
    return (*params, jnp.zeros_like(y), jnp.zeros_like(r), g_dy)


_grads.defvjp(_grads_fwd, _grads_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _forward(x, u, v, bu, bv, alpha, beta, steps, c_out):
    """The native forward pass: ``(y, r)``, r the hidden terms the backward pass reads back."""
    return native.pointwise_csr_forward(x, u, v, bu, bv, alpha, beta, steps, c_out)


def _forward_fwd(x, u, v, bu, bv, alpha, beta, steps, c_out):
    return _forward(x, u, v, bu, bv, alpha, beta, steps, c_out), (x, u, v, bu, bv, alpha, beta)


def _forward_bwd(steps, c_out, residuals, cotangents):
    # Reached only when gradients of gradients differentiate the forward pass's results. ``r`` is
    # read by the native backward pass alone, whose own VJP (_grads_bwd) gives it no cotangent,
    # so only y's counts: the XLA form's VJP.
    g_y, _ = cotangents
    return _xla_grads(*residuals, g_y, steps, c_out)


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _layer(x, u, v, bu, bv, alpha, beta, steps, c_out):
    return _forward(x, u, v, bu, bv, alpha, beta, steps, c_out)[0]


def _layer_fwd(x, u, v, bu, bv, alpha, beta, steps, c_out):
    y, r = _forward(x, u, v, bu, bv, alpha, beta, steps, c_out)
    return y, (x, u, v, bu, bv, alpha, beta, y, r)


def _layer_bwd(steps, c_out, residuals, dy):
    return _grads(*residuals, dy, steps, c_out)


_layer.defvjp(_layer_fwd, _layer_bwd)


def pointwise_csr(
    x: Array,
    kernel: Array,
    bias: Array | None,
    hidden_kernel: Array,
    hidden_bias: Array | None,
    alpha: Array,
    beta: Array,
    *,
    steps: int,
    features: int,
    strides: tuple[int, int],
) -> Array:
    """The whole 1x1 CSR layer on NHWC float32 ``x`` with the layer's own parameters (HWIO
    kernels ``(1, 1, g_in, g_out)`` / ``(1, 1, g_out, g_out)``, biases ``(g_out,)`` or None,
    scalar ``alpha``/``beta``); returns ``(N, H', W', features)``. Call it where :func:`applies`."""
    if strides != (1, 1):
        x = x[:, :: strides[0], :: strides[1], :]
    n, height, width, c_in = x.shape
    g_out = kernel.shape[-1]
    zeros = jnp.zeros((g_out,), jnp.float32)
    y = _layer(
        x.reshape(-1, c_in),
        kernel[0, 0],
        hidden_kernel[0, 0],
        zeros if bias is None else bias,
        zeros if hidden_bias is None else hidden_bias,
        alpha.reshape(1),
        beta.reshape(1),
        steps,
        features,
    )
    return y.reshape(n, height, width, features)
