"""The CPU depthwise path computes the XLA depthwise conv -- in both of its forms, the native
kernels (float32) and the pure-XLA shifted taps: values, gradients, dtypes, and the backend
choice; the networks keep their parameter tree and function."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from csr_jax import CSRConv, depthwise, models, native

DN = ("NHWC", "HWIO", "NHWC")


def _xla(x, kernel, strides, padding):
    return lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        dimension_numbers=DN,
        feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


def _inputs(shape, k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), dtype)
    return x, kernel


@pytest.fixture(params=["native", "xla_taps"])
def cpu_form(request):
    """Runs a test once with the native CPU kernels and once with the pure-XLA taps; yields a
    checker that the form really ran (the native kernels are an FFI call in the jaxpr)."""
    form = request.param
    if form == "native":
        assert native.available(), f"native kernels failed to build: {native.build_error()}"

    def check(fn, *args):
        ran_native = "csr_jax_depthwise_forward" in str(jax.make_jaxpr(fn)(*args))
        assert ran_native == (form == "native"), form

    if form == "native":
        yield check
    else:
        with native.disabled():
            yield check


# "wide" pads more than k - 1 on some sides: the input gradient then crops (negative padding).
PADDINGS = ["SAME", "VALID", ((1, 1), (1, 1)), ((2, 0), (0, 1)), ((6, 1), (0, 5))]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS, ids=["same", "valid", "sym1", "asym", "wide"])
def test_taps_equal_xla_values_and_gradients_f32(k, stride, padding, cpu_form):
    x, kernel = _inputs((2, 9, 8, 5), k, jnp.float32)
    cot = jnp.asarray(
        np.random.default_rng(1).standard_normal(_xla(x, kernel, (stride, stride), padding).shape),
        jnp.float32,
    )

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * cot)

    taps = lambda x, w: depthwise.depthwise_conv(x, w, stride, padding, impl="taps")
    xla = lambda x, w: _xla(x, w, (stride, stride), padding)
    cpu_form(taps, x, kernel)
    np.testing.assert_allclose(taps(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-5)
    g_taps = jax.grad(loss(taps), argnums=(0, 1))(x, kernel)
    g_xla = jax.grad(loss(xla), argnums=(0, 1))(x, kernel)
    for a, b in zip(g_taps, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("padding", ["SAME", ((2, 1), (0, 3))], ids=["same", "asym"])
def test_taps_gradients_on_large_maps_equal_xla(k, padding, cpu_form):
    """Maps large enough that the kernel gradient takes its padded-cotangent form (the small
    maps above take the sliced-input form)."""
    x, kernel = _inputs((2, 40, 36, 3), k, jnp.float32)
    xla = lambda x, w: _xla(x, w, (1, 1), padding)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(xla(x, kernel).shape), jnp.float32)
    taps = lambda x, w: depthwise.depthwise_conv(x, w, 1, padding, impl="taps")
    cpu_form(taps, x, kernel)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cot)
    for a, b in zip(
        jax.grad(loss(taps), argnums=(0, 1))(x, kernel),
        jax.grad(loss(xla), argnums=(0, 1))(x, kernel),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_taps_second_order_gradients_equal_xla(stride, cpu_form):
    """The taps path's hand-written backward is itself differentiated correctly (reverse over
    reverse, as in gradient penalties), and forward mode is refused with JAX's own error."""
    x, kernel = _inputs((2, 7, 6, 3), 3, jnp.float32)
    taps = lambda x, w: depthwise.depthwise_conv(x, w, stride, "SAME", impl="taps")
    xla = lambda x, w: _xla(x, w, (stride, stride), "SAME")
    cpu_form(taps, x, kernel)

    def penalty(f):
        inner = jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))
        return lambda x, w: sum(jnp.sum(g**2) for g in inner(x, w))

    for a, b in zip(
        jax.grad(penalty(taps), argnums=(0, 1))(x, kernel),
        jax.grad(penalty(xla), argnums=(0, 1))(x, kernel),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: taps(x, kernel), (x,), (x,))
    with depthwise.forced_impl("xla"):
        y, y_dot = jax.jvp(lambda x: depthwise.depthwise_conv(x, kernel, stride), (x,), (x,))
    np.testing.assert_allclose(y_dot, xla(x, kernel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (2, 2))], ids=["same", "explicit"])
def test_taps_equal_xla_bf16(k, stride, padding):
    x, kernel = _inputs((2, 8, 8, 6), k, jnp.bfloat16)
    taps = lambda x, w: depthwise.depthwise_conv(x, w, (stride, stride), padding, impl="taps")
    xla = lambda x, w: _xla(x, w, (stride, stride), padding)
    y = taps(x, kernel)
    assert y.dtype == jnp.bfloat16
    # Both round a float32 accumulation once to bf16: they agree to one bf16 ulp (2^-8 relative).
    ref64 = np.asarray(
        _xla(x.astype(jnp.float32), kernel.astype(jnp.float32), (stride, stride), padding)
    )
    scale = np.abs(ref64).max()
    np.testing.assert_allclose(np.asarray(y, np.float32), ref64, atol=scale * 2**-7)
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(xla(x, kernel), np.float32), atol=scale * 2**-7
    )
    loss = lambda f: lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) ** 2)
    for a, b in zip(
        jax.grad(loss(taps), argnums=(0, 1))(x, kernel),
        jax.grad(loss(xla), argnums=(0, 1))(x, kernel),
    ):
        assert a.dtype == b.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, atol=np.abs(b).max() * 2**-5)


def test_backend_choice_and_forcing(monkeypatch):
    x, kernel = _inputs((1, 6, 6, 4), 3, jnp.float32)
    assert depthwise.default_impl() == ("taps" if jax.default_backend() == "cpu" else "xla")
    with depthwise.forced_impl("xla"):
        assert depthwise.default_impl() == "xla"
        with depthwise.forced_impl("taps"):
            assert depthwise.default_impl() == "taps"
        assert depthwise.default_impl() == "xla"
    for backend, expected in (("cpu", "taps"), ("gpu", "xla"), ("tpu", "xla")):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert depthwise.default_impl() == expected
    monkeypatch.undo()

    def ops(**kw):
        fn = lambda x, w: depthwise.depthwise_conv(x, w, 1, "SAME", **kw)
        return str(jax.make_jaxpr(fn)(x, kernel))

    assert "conv_general_dilated" in ops(impl="xla")
    assert "conv_general_dilated" not in ops(impl="taps")
    with depthwise.forced_impl("xla"):
        assert "conv_general_dilated" in ops()
    with depthwise.forced_impl("taps"):
        assert "conv_general_dilated" not in ops()
    with pytest.raises(ValueError, match="one of"):
        depthwise.depthwise_conv(x, kernel, impl="cudnn")
    with pytest.raises(ValueError, match=r"\(kh, kw, 1, C\)"):
        depthwise.depthwise_conv(x, kernel[..., :2])


def test_conv_general_dilated_dropin_routes_only_depthwise():
    x, kernel = _inputs((1, 6, 6, 4), 3, jnp.float32)
    conv = depthwise.conv_general_dilated("taps")
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, DN)
    depthwise_jaxpr = str(
        jax.make_jaxpr(
            lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=4)
        )(x, kernel)
    )
    assert "conv_general_dilated" not in depthwise_jaxpr
    dense = jnp.ones((3, 3, 4, 4))
    dense_jaxpr = str(
        jax.make_jaxpr(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=dn))(x, dense)
    )
    assert "conv_general_dilated" in dense_jaxpr


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(
    "padding", ["SAME", "VALID", ((0, 0), (0, 0))], ids=["same", "valid", "zeros"]
)
def test_pointwise_dot_equals_xla_conv(stride, padding):
    x, _ = _inputs((2, 7, 6, 5), 1, jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(4).standard_normal((1, 1, 5, 3)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, DN)
    fast = depthwise.conv_general_dilated("taps")
    dot = lambda x, w: fast(x, w, (stride, stride), padding, dimension_numbers=dn)
    xla = lambda x, w: lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=DN, precision=lax.Precision.HIGHEST
    )
    assert "conv_general_dilated" not in str(jax.make_jaxpr(dot)(x, kernel))
    np.testing.assert_allclose(dot(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) ** 2)
    for a, b in zip(
        jax.grad(loss(dot), argnums=(0, 1))(x, kernel),
        jax.grad(loss(xla), argnums=(0, 1))(x, kernel),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # A padded 1x1 conv is not a plain contraction: it stays XLA's conv.
    padded = lambda x, w: fast(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    assert "conv_general_dilated" in str(jax.make_jaxpr(padded)(x, kernel))
    by_backend = depthwise.conv_general_dilated()
    with depthwise.forced_impl("xla"):
        assert "conv_general_dilated" in str(
            jax.make_jaxpr(lambda x, w: by_backend(x, w, (1, 1), "SAME", dimension_numbers=dn))(
                x, kernel
            )
        )


def _has_depthwise_conv(fn, *args) -> bool:
    """Whether ``fn`` traces to an XLA conv with ``feature_group_count`` > 1."""
    return any(
        int(n) > 1 for n in re.findall(r"feature_group_count=(\d+)", str(jax.make_jaxpr(fn)(*args)))
    )


@pytest.mark.parametrize("kernel_size,strides", [(3, 2), (5, 1)])
def test_csr_conv_depthwise_paths_equal_xla(kernel_size, strides):
    layer = CSRConv(
        6, kernel_size, 3, strides=strides, padding=kernel_size // 2, depthwise=True, use_bias=True
    )
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 6, 6, 6)), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    # Perturb alpha/beta so the recurrence mixes both terms.
    params = jax.tree.map(lambda p: p + 0.1, params)

    def run():
        # A fresh function per path: the path is chosen when it is traced.
        loss = lambda p, x: jnp.sum(layer.apply(p, x) ** 2)
        return _has_depthwise_conv(loss, params, x), jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1))
        )(params, x)

    with depthwise.forced_impl("taps"):
        conv_taps, (v_taps, g_taps) = run()
    with depthwise.forced_impl("xla"):
        conv_xla, (v_xla, g_xla) = run()
    assert (conv_taps, conv_xla) == (False, True)
    np.testing.assert_allclose(v_taps, v_xla, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_taps), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name,csr",
    [("mobilenetv2_cifar", None), ("mobilenetv2_cifar", "reference"), ("efficientnet_b0", None)],
)
def test_models_same_params_either_path(name, csr):
    """Param tree (names, shapes, dtypes) is the same whichever path is traced (checkpoints move
    between CPU and accelerators); a tiny forward agrees on the two paths."""
    model = models.create(name, num_classes=10, csr=csr)
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    init = lambda: jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    with depthwise.forced_impl("taps"):
        taps_tree = init()
    with depthwise.forced_impl("xla"):
        xla_tree = init()
    assert jax.tree.structure(taps_tree) == jax.tree.structure(xla_tree)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(taps_tree)] == [
        (a.shape, a.dtype) for a in jax.tree.leaves(xla_tree)
    ]
    assert any(
        "depthwise" in "/".join(map(str, path))
        for path, _ in jax.tree_util.tree_leaves_with_path(taps_tree)
    )


def test_mobilenet_forward_equal_on_both_paths():
    model = models.create(
        "mobilenetv2_cifar", num_classes=10, csr="reference", cfg=((6, 24, 1, 2),)
    )
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 4, 4, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def run():
        fwd = lambda v, x: model.apply(v, x, train=False)
        return _has_depthwise_conv(fwd, variables, x), jax.jit(fwd)(variables, x)

    with depthwise.forced_impl("taps"):
        conv_taps, y_taps = run()
    with depthwise.forced_impl("xla"):
        conv_xla, y_xla = run()
    assert (conv_taps, conv_xla) == (False, True)
    np.testing.assert_allclose(y_taps, y_xla, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unroll", [None, 1], ids=["unrolled", "rolled"])
@pytest.mark.parametrize("strides", [1, 2])
def test_csr_conv_1x1_paths_equal(strides, unroll):
    """A widening 1x1 CSRConv (g_in 2 < g_out 3) in the XLA form (the native op off, as without a
    compiler or on several devices) composes its second hidden term on CPU when its steps are
    unrolled (r_2 = (U V) x_1 + V b_U + b_V: two more, parameter-sized, dots), and steps through
    it on GPU/TPU and in the rolled form; same values and gradients (5 input channels, T=3: the
    input wraps around). tests/test_pointwise_native.py holds the native op to this form."""
    layer = CSRConv(7, 1, 3, strides=strides, use_bias=True, unroll=unroll)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 4, 5)), jnp.float32)
    params = jax.tree.map(lambda p: p + 0.1, layer.init(jax.random.key(0), x))

    def run():
        loss = lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))
        dots = str(jax.make_jaxpr(loss)(params, x)).count("dot_general")
        return dots, jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    with depthwise.forced_impl("taps"), native.disabled():
        dots_taps, (v_taps, g_taps) = run()
    with depthwise.forced_impl("xla"):
        dots_xla, (v_xla, g_xla) = run()
    assert dots_taps == dots_xla + (2 if unroll is None else 0)
    np.testing.assert_allclose(v_taps, v_xla, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_taps), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
