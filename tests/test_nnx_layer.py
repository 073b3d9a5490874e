"""The native NNX layer ``csr_jax.nnx.CSRConv`` against the linen ``csr_jax.CSRConv`` on the same
weights (the linen layer is itself tested against an independent float64 oracle)."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from csr_jax import CSRConv as LinenCSRConv
from csr_jax.nnx import CSRConv

HIDDEN = ("hidden_kernel", "alpha", "beta", "hidden_bias")

CASES = [
    # (c_in, c_out, k, T, stride, padding, bias, depthwise, unroll)
    (10, 7, 3, 3, 1, "SAME", True, False, None),
    (10, 7, 3, 3, 2, 1, False, False, None),
    (6, 13, 1, 4, 1, "SAME", True, False, None),
    (6, 13, 1, 4, 2, 0, False, False, 1),
    (9, 9, 3, 3, 1, 1, True, True, None),
    (10, 10, 3, 4, 2, "SAME", True, True, 1),
    (8, 11, 3, 4, 1, "VALID", True, False, 2),
    (12, 12, 3, 10, 1, "SAME", True, False, None),  # T above the full-unroll limit: rolled scan
    (12, 10, 3, 1, 1, "SAME", True, False, None),  # T = 1: a plain conv, no hidden parameters
]


def _linen_flat(params) -> dict:
    """The linen layer's parameters under the NNX attribute names (``hidden/x`` -> ``x``)."""
    flat = {k: v for k, v in params.items() if k != "hidden"}
    flat.update(params.get("hidden", {}))
    return flat


def _nnx_flat(layer: CSRConv) -> dict:
    return nnx.to_pure_dict(nnx.state(layer, nnx.Param))


def _load(layer: CSRConv, flat: dict) -> None:
    """Copies linen weights into the NNX layer, checking both have the same names and shapes."""
    ours = _nnx_flat(layer)
    assert {k: np.shape(v) for k, v in ours.items()} == {k: np.shape(v) for k, v in flat.items()}
    for name, value in flat.items():
        getattr(layer, name)[...] = value


@pytest.mark.parametrize("c_in,c_out,k,T,stride,padding,bias,depthwise,unroll", CASES)
def test_equals_linen_layer_on_the_same_weights(
    c_in, c_out, k, T, stride, padding, bias, depthwise, unroll
):
    rng = np.random.default_rng(c_in * 100 + c_out * 10 + T)
    x = jnp.asarray(rng.normal(size=(2, 7, 8, c_in)), jnp.float32)
    kwargs = dict(
        strides=stride, padding=padding, use_bias=bias, depthwise=depthwise, unroll=unroll
    )
    linen = LinenCSRConv(c_out, k, T, **kwargs)
    params = linen.init(jax.random.key(1), x)["params"]
    flat = _linen_flat(params)
    for name in ("alpha", "beta"):  # off their 0.5 init, so swapping them would show
        if name in flat:
            flat[name] = jnp.asarray(rng.uniform(-1.0, 1.5), jnp.float32)
    if "hidden" in params:
        params = {**params, "hidden": {n: flat[n] for n in params["hidden"]}}

    layer = CSRConv(c_in, c_out, k, T, **kwargs, rngs=nnx.Rngs(0))
    assert (layer.hidden_kernel is None) == (T == 1)
    _load(layer, flat)
    expected = linen.apply({"params": params}, x)
    y = layer(x)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6 * float(jnp.abs(expected).max()))


def test_gradients_equal_linen_and_training_step_works():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    target = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
    linen = LinenCSRConv(8, 3, 4, use_bias=True)
    params = linen.init(jax.random.key(2), x)["params"]
    layer = CSRConv(8, 8, 3, 4, use_bias=True, rngs=nnx.Rngs(0))
    _load(layer, _linen_flat(params))

    g_linen = _linen_flat(
        jax.grad(lambda p: jnp.mean((linen.apply({"params": p}, x) - target) ** 2))(params)
    )
    g_nnx = nnx.to_pure_dict(nnx.grad(lambda m: jnp.mean((m(x) - target) ** 2))(layer))
    assert set(g_nnx) == set(g_linen)
    for name in g_linen:
        np.testing.assert_allclose(g_nnx[name], g_linen[name], rtol=1e-5, atol=1e-7, err_msg=name)

    optimizer = nnx.Optimizer(layer, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(m)
        opt.update(m, grads)
        return loss

    loss0 = float(step(layer, optimizer))
    assert float(jnp.mean((layer(x) - target) ** 2)) < loss0


def test_bfloat16_compute_keeps_param_dtype():
    layer = CSRConv(8, 8, 3, 2, dtype=jnp.bfloat16, use_bias=True, rngs=nnx.Rngs(0))
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(_nnx_flat(layer)))
    assert layer(jnp.ones((1, 4, 4, 8))).dtype == jnp.bfloat16


def test_numpy_integers_accepted_and_booleans_refused():
    layer = CSRConv(
        np.int64(8), np.int32(6), np.int64(3), np.int64(2), strides=np.int64(2), rngs=nnx.Rngs(0)
    )
    assert layer(jnp.ones((1, 6, 6, 8))).shape == (1, 3, 3, 6)
    assert type(layer.steps) is int and layer.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got the bool True"):
        CSRConv(8, 8, 3, True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features .* must be an int >= 1, got the bool True"):
        CSRConv(True, 8, 3, 1, rngs=nnx.Rngs(0))


def test_bad_configuration_refused_at_construction_and_wrong_input_at_call():
    with pytest.raises(ValueError, match="exceeds the input channels"):
        CSRConv(4, 8, 3, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depthwise=True needs as many input as output"):
        CSRConv(8, 6, 3, 2, depthwise=True, rngs=nnx.Rngs(0))
    layer = CSRConv(8, 8, 3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features=8 .* build it with in_features=6"):
        layer(jnp.ones((1, 4, 4, 6)))
    with pytest.raises(ValueError, match="rank 4"):
        layer(jnp.ones((4, 4, 8)))


def test_import_csr_jax_does_not_load_the_nnx_layer():
    code = "import sys, csr_jax; print('csr_jax.nnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
