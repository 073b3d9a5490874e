"""CSRConv against an independent float64 NumPy implementation of docs/csr_conv.md, plus its contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import test_util

from csr_jax import CSRConv
from tests.reference_numpy import csr_conv as numpy_csr_conv
from tests.reference_numpy import flat_params


def _randomise_scalars(variables, rng):
    """alpha/beta start at 0.5; move them so the test sees their separate roles."""

    def fix(path, leaf):
        name = path[-1].key
        if name in ("alpha", "beta"):
            return jnp.asarray(rng.uniform(-1.0, 1.5), leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(fix, variables)


CASES = [
    # (c_in, c_out, k, T, stride, padding, bias, depthwise, hw)
    (10, 7, 3, 3, 1, "SAME", False, False, 9),
    (10, 7, 3, 3, 2, 1, True, False, 9),
    (6, 13, 1, 4, 1, "SAME", True, False, 5),
    (6, 13, 1, 4, 2, 0, False, False, 7),
    (5, 5, 3, 2, 1, 1, False, False, 6),
    (8, 11, 3, 8, 2, "SAME", True, False, 8),
    (9, 9, 3, 3, 1, 1, True, True, 7),
    (10, 10, 3, 4, 2, "SAME", False, True, 8),
    (7, 7, 5, 2, 1, 2, False, True, 6),
    (12, 10, 3, 1, 1, "VALID", True, False, 6),
    (4, 6, 3, 4, 1, "VALID", False, False, 7),
]


@pytest.mark.parametrize("c_in,c_out,k,T,stride,padding,bias,depthwise,hw", CASES)
def test_matches_numpy_reference(c_in, c_out, k, T, stride, padding, bias, depthwise, hw):
    rng = np.random.default_rng(c_in * 100 + c_out * 10 + T)
    x = rng.normal(size=(2, hw, hw + 1, c_in)).astype(np.float32)
    layer = CSRConv(
        c_out, k, T, strides=stride, padding=padding, use_bias=bias, depthwise=depthwise
    )
    variables = layer.init(jax.random.key(1), x)
    variables = _randomise_scalars(variables, rng)
    y = np.asarray(layer.apply(variables, x))
    expected = numpy_csr_conv(
        x,
        flat_params(variables),
        features=c_out,
        kernel_size=(k, k),
        steps=T,
        stride=(stride, stride),
        padding=padding,
        depthwise=depthwise,
    )
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_parameter_names_and_shapes():
    layer = CSRConv(13, 3, 4, use_bias=True)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 6, 6, 10)))["params"]
    flat = {
        "/".join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    names = sorted(p.split("/")[-1] for p in flat)
    assert names == ["alpha", "beta", "hidden_bias", "hidden_kernel", "input_bias", "input_kernel"]
    shapes = {p.split("/")[-1]: s for p, s in flat.items()}
    assert shapes["input_kernel"] == (3, 3, 3, 4)  # g_in = ceil(10/4), g_out = ceil(13/4)
    assert shapes["hidden_kernel"] == (3, 3, 4, 4)
    assert shapes["input_bias"] == shapes["hidden_bias"] == (4,)
    assert shapes["alpha"] == shapes["beta"] == ()
    dw = CSRConv(8, 3, 2, depthwise=True).init(jax.random.key(0), jnp.zeros((1, 6, 6, 8)))["params"]
    assert dw["input_kernel"].shape == (3, 3, 1, 4)
    assert dw["hidden"]["hidden_kernel"].shape == (3, 3, 1, 4)


def test_alpha_beta_initialised_to_half_and_reference_init_bounds():
    layer = CSRConv(64, 3, 2, use_bias=True)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 64)))["params"]
    assert float(params["hidden"]["alpha"]) == 0.5 and float(params["hidden"]["beta"]) == 0.5
    bound = 1.0 / np.sqrt(3 * 3 * 32)  # fan_in = k*k*g_in, g_in = 32
    for name, tree in (("input_kernel", params), ("hidden_kernel", params["hidden"])):
        w = np.asarray(tree[name])
        assert np.abs(w).max() <= bound + 1e-7, name
        assert np.abs(w).max() > 0.9 * bound, f"{name} does not fill the reference's uniform range"
    assert np.abs(np.asarray(params["input_bias"])).max() <= bound + 1e-7


@pytest.mark.parametrize(
    "padding,stride,bias",
    [("SAME", 1, True), (1, 2, False), ("VALID", 1, True), (((1, 0), (0, 1)), 1, False)],
)
def test_steps_one_is_exactly_nn_conv(padding, stride, bias):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    layer = CSRConv(6, 3, 1, strides=stride, padding=padding, use_bias=bias)
    variables = layer.init(jax.random.key(1), x)
    params = variables["params"]
    assert set(params) == ({"input_kernel", "input_bias"} if bias else {"input_kernel"})
    conv = nn.Conv(6, (3, 3), strides=stride, padding=padding, use_bias=bias)
    conv_params = {"kernel": params["input_kernel"]}
    if bias:
        conv_params["bias"] = params["input_bias"]
    np.testing.assert_allclose(
        layer.apply(variables, x), conv.apply({"params": conv_params}, x), rtol=1e-5, atol=1e-5
    )


def test_gradients_match_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 5, 5, 5), dtype=jnp.float64)
        layer = CSRConv(4, 3, 2, strides=2, padding=1, use_bias=True, param_dtype=jnp.float64)
        params = layer.init(jax.random.key(1), x)["params"]
        # Move alpha off 0.5 and keep relu's kink away from the sampled points.
        params = jax.tree_util.tree_map(lambda p: p, params)
        params["hidden"]["alpha"] = jnp.asarray(0.8, jnp.float64)

        def f(params, x):
            return layer.apply({"params": params}, x)

        test_util.check_grads(f, (params, x), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_jit_and_vmap_agree_with_eager():
    x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 8))
    layer = CSRConv(12, 3, 4, use_bias=True)
    variables = layer.init(jax.random.key(1), x[0])
    eager = jnp.stack([layer.apply(variables, xi) for xi in x])
    jitted = jax.jit(layer.apply)(variables, x[0])
    vmapped = jax.vmap(layer.apply, in_axes=(None, 0))(variables, x)
    np.testing.assert_allclose(jitted, eager[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features,k", [(24, 3), (48, 1)], ids=["3x3", "1x1-widening"])
def test_bfloat16_compute_keeps_float32_params_and_stays_close(features, k):
    """The 1x1 widening layer (g_in 6 < g_out 16) composes its second step on CPU, in bf16 too."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    f32 = CSRConv(features, k, 3, use_bias=True)
    bf16 = CSRConv(features, k, 3, use_bias=True, dtype=jnp.bfloat16)
    variables = f32.init(jax.random.key(1), x)
    assert all(
        p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(bf16.init(jax.random.key(1), x))
    )
    y32 = f32.apply(variables, x)
    y16 = bf16.apply(variables, x)
    assert y16.dtype == jnp.bfloat16
    err = (
        np.abs(np.asarray(y16, np.float32) - np.asarray(y32)).max() / np.abs(np.asarray(y32)).max()
    )
    assert err < 3e-2


def test_unroll_does_not_change_the_result():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 9))
    base = CSRConv(9, 3, 4)
    variables = base.init(jax.random.key(1), x)
    for unroll in (2, 3, 10):
        np.testing.assert_allclose(
            CSRConv(9, 3, 4, unroll=unroll).apply(variables, x),
            base.apply(variables, x),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize("stride,bias", [(1, False), (2, True)])
def test_widening_1x1_layer_composes_its_second_step_without_changing_values_or_gradients(
    stride, bias
):
    """A 1x1 layer with g_in < g_out computes r_2 = x_1 (U V) on CPU; the rolled form steps."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 6, 5, 9), dtype=jnp.float64)
        composed = CSRConv(24, 1, 3, strides=stride, use_bias=bias, param_dtype=jnp.float64)
        stepped = CSRConv(
            24, 1, 3, strides=stride, use_bias=bias, param_dtype=jnp.float64, unroll=1
        )
        params = composed.init(jax.random.key(1), x)["params"]
        params["hidden"]["alpha"] = jnp.asarray(0.7, jnp.float64)
        params["hidden"]["beta"] = jnp.asarray(-0.3, jnp.float64)
        # g_in = 3, g_out = 8: the parameter-sized product U V is in the composed program only.
        assert "f64[3,8] = dot_general" in str(
            jax.make_jaxpr(composed.apply)({"params": params}, x)
        )
        assert "f64[3,8] = dot_general" not in str(
            jax.make_jaxpr(stepped.apply)({"params": params}, x)
        )

        def loss(layer):
            return lambda p, x: jnp.sum(jnp.sin(layer.apply({"params": p}, x)))

        np.testing.assert_allclose(
            composed.apply({"params": params}, x),
            stepped.apply({"params": params}, x),
            rtol=1e-12,
            atol=1e-12,
        )
        got = jax.grad(loss(composed), argnums=(0, 1))(params, x)
        want = jax.grad(loss(stepped), argnums=(0, 1))(params, x)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs,shape,message",
    [
        (dict(features=8, kernel_size=3, steps=0), (1, 4, 4, 8), "steps must be an int >= 1"),
        (dict(features=8, kernel_size=3, steps=5), (1, 4, 4, 4), "exceeds the input channels"),
        (dict(features=3, kernel_size=3, steps=4), (1, 4, 4, 8), "exceeds features"),
        (
            dict(features=6, kernel_size=3, steps=2, depthwise=True),
            (1, 4, 4, 8),
            "depthwise=True needs as many input as output",
        ),
        (dict(features=8, kernel_size=3, steps=2), (4, 4, 8), "rank 4"),
        (dict(features=8, kernel_size=3, steps=2), (1, 1, 4, 4, 8), "rank 4"),
        (
            dict(features=8, kernel_size=3, steps=2, padding="CIRCULAR"),
            (1, 4, 4, 8),
            "padding 'CIRCULAR' is not supported",
        ),
        (
            dict(features=8, kernel_size=3, steps=2, padding=(1, 2, 3)),
            (1, 4, 4, 8),
            "invalid padding",
        ),
        (
            dict(features=8, kernel_size=3, steps=2, padding=-1),
            (1, 4, 4, 8),
            "padding must be >= 0",
        ),
        (
            dict(features=8, kernel_size=3, steps=2, strides=0),
            (1, 4, 4, 8),
            "strides must be a positive int",
        ),
        (
            dict(features=8, kernel_size=3, steps=2, strides=(1, 2, 2)),
            (1, 4, 4, 8),
            "strides must be a positive int",
        ),
        (dict(features=8, kernel_size=(2, 2), steps=2), (1, 4, 4, 8), "even side"),
        (dict(features=8, kernel_size=3, steps=2, unroll=0), (1, 4, 4, 8), "unroll must be"),
    ],
)
def test_documented_errors(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        CSRConv(**kwargs).init(jax.random.key(0), jnp.zeros(shape))
