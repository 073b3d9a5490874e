"""The native widening 1x1 CSR layer (csr_jax.pointwise_native): it is what a float32 widening 1x1
CSRConv runs on the CPU, it computes the XLA form's values, gradients and gradients of gradients
(input wrap-around, a cut last step, biases, strides, T = 2..4), the NNX layer runs it too, and every configuration it does not cover keeps the XLA form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from csr_jax import CSRConv, depthwise, native
from csr_jax.nnx import CSRConv as NNXCSRConv

TARGET = "csr_jax_pointwise_csr_forward"


@pytest.fixture(scope="module", autouse=True)
def built():
    assert native.available(), f"native kernels failed to build: {native.build_error()}"


def _runs_native(fn, *args) -> bool:
    # A fresh function each time: jit caches the trace of a function, and the switches
    # (native.disabled, depthwise.forced_impl) act when it is traced.
    return TARGET in jax.jit(lambda *a: fn(*a)).lower(*args).as_text()


def _loss(layer, params, x):
    # sin: a cotangent that differs per output element, so every gradient path is exercised.
    return jnp.sum(jnp.sin(layer.apply(params, x)))


def _close(a, b, tol=1e-5):
    """Every leaf within ``tol`` of the other, relative to the leaf's largest magnitude: the two
    forms add the same float32 products in another order (sums over hundreds of pixels)."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        np.testing.assert_allclose(u, v, rtol=0, atol=tol * max(np.abs(v).max(), 1e-30))


@pytest.mark.parametrize(
    "c_in, c_out, steps, use_bias, strides, hw",
    [
        (16, 96, 3, False, 1, (5, 6)),  # MobileNetV2's expand shape (16 -> 6 x 16)
        (5, 13, 3, True, 1, (4, 3)),  # input wraps around (15 of 5 channels), last step cut
        (7, 22, 4, True, 2, (7, 5)),  # T=4, stride 2, last step cut to 4 of 6
        (4, 9, 2, True, 1, (3, 3)),  # T=2: only the composed second step
        (12, 198, 3, True, 1, (3, 4)),  # g_out = 66: a step wider than 64
        (40, 120, 3, False, 1, (13, 17)),  # 221 pixels per image: several tiles and threads
    ],
    ids=["expand", "wrap-cut", "t4-stride2", "t2", "wide", "tiles"],
)
def test_native_layer_equals_the_xla_form(c_in, c_out, steps, use_bias, strides, hw):
    layer = CSRConv(c_out, 1, steps, strides=strides, use_bias=use_bias)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *hw, c_in)), jnp.float32)
    params = layer.init(jax.random.key(1), x)
    # alpha, beta and the biases away from their initial values; alpha < 0 checks that nothing
    # assumes it positive.
    params = jax.tree.map(lambda p: p + 0.1 if p.ndim else p - 0.7, params)
    loss = lambda p, x: _loss(layer, p, x)
    assert _runs_native(loss, params, x)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    with native.disabled():
        assert not _runs_native(loss, params, x)
        value_xla, grads_xla = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(value, value_xla, rtol=1e-5)
    _close(grads, grads_xla)


def test_gradients_of_gradients_are_the_xla_forms():
    """The native backward pass carries the VJP of the XLA expression: a gradient penalty (the
    squared norm of the input gradient) differentiates to the XLA form's."""
    layer = CSRConv(30, 1, 3, use_bias=True)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 5, 8)), jnp.float32)
    params = jax.tree.map(lambda p: p + 0.05, layer.init(jax.random.key(3), x))

    def penalty(p, x):
        g = jax.grad(lambda x: _loss(layer, p, x))(x)
        return jnp.sum(g * g)

    assert _runs_native(penalty, params, x)
    native_grads = jax.jit(jax.grad(penalty, argnums=(0, 1)))(params, x)
    with native.disabled():
        xla_grads = jax.jit(jax.grad(penalty, argnums=(0, 1)))(params, x)
    _close(native_grads, xla_grads, tol=1e-4)


def test_nnx_layer_runs_it_and_agrees():
    layer = NNXCSRConv(6, 36, kernel_size=1, steps=3, use_bias=True, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 5, 5, 6)), jnp.float32)
    graphdef, state = nnx.split(layer)

    def loss(state, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x)))

    assert _runs_native(loss, state, x)
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(state, x)
    with native.disabled():
        value_xla, grads_xla = jax.value_and_grad(loss, argnums=(0, 1))(state, x)
    np.testing.assert_allclose(value, value_xla, rtol=1e-5)
    _close(grads, grads_xla)


def test_vmap_over_the_layer():
    layer = CSRConv(24, 1, 3)
    xs = jnp.asarray(np.random.default_rng(5).standard_normal((3, 2, 4, 4, 8)), jnp.float32)
    params = layer.init(jax.random.key(0), xs[0])
    ys = jax.vmap(lambda x: layer.apply(params, x))(xs)
    with native.disabled():
        ys_xla = jax.vmap(lambda x: layer.apply(params, x))(xs)
    np.testing.assert_allclose(ys, ys_xla, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "why, layer, c_in, dtype",
    [
        ("narrowing (g_in >= g_out)", CSRConv(8, 1, 4), 8, jnp.float32),
        ("bfloat16", CSRConv(48, 1, 3, dtype=jnp.bfloat16), 8, jnp.float32),
        ("rolled steps", CSRConv(48, 1, 3, unroll=1), 8, jnp.float32),
        ("T = 1", CSRConv(48, 1, 1), 8, jnp.float32),
        ("3x3 kernel", CSRConv(48, 3, 3), 8, jnp.float32),
        ("padded 1x1", CSRConv(48, 1, 3, padding=1), 8, jnp.float32),
        ("a middle step cut (C_out 5, T 4: g_out 2)", CSRConv(5, 1, 4), 4, jnp.float32),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_what_it_does_not_cover_keeps_the_xla_form(why, layer, c_in, dtype):
    x = jnp.ones((1, 4, 4, c_in), dtype)
    params = layer.init(jax.random.key(0), x)
    assert not _runs_native(lambda p, x: layer.apply(p, x), params, x), why


def test_only_on_the_cpu_path():
    """forced_impl("xla") (the GPU/TPU path, traced on a CPU) keeps the XLA form; "taps" (the CPU
    path) runs the native op -- the same switch as the native depthwise and BatchNorm ops."""
    layer = CSRConv(48, 1, 3)
    x = jnp.ones((1, 4, 4, 8), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    fn = lambda p, x: layer.apply(p, x)
    with depthwise.forced_impl("xla"):
        assert not _runs_native(fn, params, x)
    with depthwise.forced_impl("taps"):
        assert _runs_native(fn, params, x)
