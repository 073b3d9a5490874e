"""The native CPU kernels (csr_jax.native): the three depthwise ops equal XLA's depthwise conv and
its gradients, the BatchNorm kernels equal the XLA form of the fused BatchNorm (values, first and
second derivatives), they are what the CPU path runs, and the build is cached, switchable and
falls back to the pure-XLA form with a warning when it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from csr_jax import depthwise, native
from csr_jax.models import batch_norm

REPO = Path(__file__).resolve().parents[1]


def _xla(x, kernel, strides, padding):
    return lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


@pytest.fixture(scope="module", autouse=True)
def built():
    assert native.available(), f"native kernels failed to build: {native.build_error()}"


@pytest.mark.parametrize(
    "shape, k, strides, pads",
    [
        ((2, 9, 8, 5), 3, (1, 1), ((1, 1), (1, 1))),
        ((2, 9, 10, 20), 3, (2, 2), ((0, 1), (1, 1))),
        ((3, 8, 7, 17), 5, (2, 1), ((2, 2), (0, 3))),
        ((1, 5, 5, 3), 3, (1, 2), ((0, 0), (0, 0))),
        ((2, 6, 6, 33), 3, (1, 1), ((3, 0), (0, 2))),
    ],
    ids=["same", "stride2", "k5-mixed", "valid", "wide-low"],
)
def test_ops_are_the_conv_and_its_transposes(shape, k, strides, pads):
    """forward = the conv; input_grad and kernel_grad = its VJP, for odd channel counts (vector
    remainders), mixed strides and padding wider than the window on one side."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), jnp.float32)
    y_ref, vjp = jax.vjp(lambda x, w: _xla(x, w, strides, pads), x, kernel)
    low = (pads[0][0], pads[1][0])
    y = jax.jit(native.depthwise_forward, static_argnums=(2, 3, 4))(
        x, kernel, strides, low, y_ref.shape[1:3]
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
    dx_ref, dk_ref = vjp(g)
    dx = native.depthwise_input_grad(g, kernel, strides, low, x.shape)
    dk = native.depthwise_kernel_grad(x, g, strides, low, kernel.shape)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-4)
    # The kernel gradient's partial sums are cut the same way on every run: bitwise repeatable.
    again = native.depthwise_kernel_grad(x, g, strides, low, kernel.shape)
    assert np.array_equal(np.asarray(dk), np.asarray(again))


def test_the_cpu_path_runs_them_and_vmap_works():
    """depthwise_conv on the CPU path is the FFI call for float32 (not for bf16); under jax.vmap
    it runs per mapped element and still equals the conv."""
    x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
    conv = lambda x, w: depthwise.depthwise_conv(x, w, 1, "SAME", impl="taps")
    assert "csr_jax_depthwise_forward" in str(jax.make_jaxpr(conv)(x[0], kernel))
    bf16 = str(jax.make_jaxpr(conv)(x[0].astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)))
    assert "csr_jax_depthwise" not in bf16
    with native.disabled():  # a new function: traces are cached per function
        fresh = lambda x, w: depthwise.depthwise_conv(x, w, 1, "SAME", impl="taps")
        assert "csr_jax_depthwise" not in str(jax.make_jaxpr(fresh)(x[0], kernel))
    mapped = jax.vmap(conv, in_axes=(0, None))(x, kernel)
    for i in range(3):
        np.testing.assert_allclose(
            mapped[i], _xla(x[i], kernel, (1, 1), "SAME"), rtol=1e-5, atol=1e-5
        )


def _bn_inputs(shape, constant_channel):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 2.0 + 0.5
    if constant_channel:
        x[..., 0] = 3.0  # variance 0: E[x^2] - E[x]^2 may round below 0 (the clipped branch)
    c = shape[-1]
    params = [jnp.asarray(rng.standard_normal(c), jnp.float32) for _ in range(2)]
    cotangents = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (shape, (c,), (c,))]
    return jnp.asarray(x, jnp.float32), params, cotangents


@pytest.mark.parametrize("activation", [jax.nn.relu, jax.nn.relu6], ids=["relu", "relu6"])
@pytest.mark.parametrize(
    "shape, constant_channel",
    [((2, 5, 7, 13), False), ((3, 1, 1, 4), True), ((4, 6, 6, 40), True)],
    ids=["odd-channels", "three-rows", "wide"],
)
def test_batch_norm_kernels_equal_the_xla_form(activation, shape, constant_channel):
    """batch_norm_train with the native kernels = its XLA form: outputs, the VJP for cotangents
    of y AND of the batch statistics, and the gradient of a gradient; bitwise repeatable."""
    x, (scale, bias), (g_y, g_mean, g_var) = _bn_inputs(shape, constant_channel)

    def forms():
        f = lambda x, s, b: batch_norm.batch_norm_train(x, s, b, 1e-3, activation)
        loss = lambda x, s, b: sum(jnp.vdot(o, g) for o, g in zip(f(x, s, b), (g_y, g_mean, g_var)))
        grad = jax.grad(loss, argnums=(0, 1, 2))
        second = jax.grad(lambda x, s, b: sum(jnp.sum(t**2) for t in grad(x, s, b)), (0, 1, 2))
        jaxpr = str(jax.make_jaxpr(grad)(x, scale, bias))
        return f(x, scale, bias), grad(x, scale, bias), second(x, scale, bias), jaxpr

    got, got_grad, got_second, jaxpr = forms()
    assert "csr_jax_batch_norm_forward" in jaxpr and "csr_jax_batch_norm_backward" in jaxpr
    with native.disabled():
        want, want_grad, want_second, xla_jaxpr = forms()
    assert "csr_jax_batch_norm" not in xla_jaxpr
    for a, b in zip(jax.tree.leaves((got, got_grad)), jax.tree.leaves((want, want_grad))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()) + 1e-6)
    # A constant channel's second derivative jumps at variance 0 (the clip), where the float64
    # statistics of the kernels and XLA's float32 ones may land on different sides: not compared.
    cut = (lambda t: t[..., 1:]) if constant_channel else (lambda t: t)
    for a, b in zip(map(cut, got_second), map(cut, want_second)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()) + 1e-6)
    again = forms()[1]
    assert all(np.array_equal(a, b) for a, b in zip(got_grad, again))


def test_batch_norm_kernels_take_only_what_they_cover():
    """float32 with ReLU/ReLU6 runs native; bf16 input, no activation and SiLU do not."""
    x, (scale, bias), _ = _bn_inputs((2, 4, 4, 8), False)
    trace = lambda x, act=jax.nn.relu6: str(
        jax.make_jaxpr(lambda x: batch_norm.batch_norm_train(x, scale, bias, 1e-5, act))(x)
    )
    assert "csr_jax_batch_norm_forward" in trace(x)
    assert "csr_jax_batch_norm" not in trace(x.astype(jnp.bfloat16))
    assert "csr_jax_batch_norm" not in trace(x, jax.nn.silu)
    assert "csr_jax_batch_norm" not in trace(x, None)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


_PROBE = """
    import warnings
    warnings.simplefilter("always")
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from csr_jax import depthwise, native
    from csr_jax.models import batch_norm
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
    conv = lambda x, w: depthwise.depthwise_conv(x, w, 1, "SAME", impl="taps")
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=4)
    np.testing.assert_allclose(conv(x, w), ref, rtol=1e-5, atol=1e-5)
    bn = lambda x: batch_norm.batch_norm_train(x, jnp.ones(4), jnp.zeros(4), 1e-5, jax.nn.relu6)
    traced = str(jax.make_jaxpr(conv)(x, w)) + str(jax.make_jaxpr(bn)(x))
    used = ["csr_jax_depthwise_forward" in traced, "csr_jax_batch_norm_forward" in traced]
    assert used[0] == used[1], used
    print("native-used", used[0])
"""


def test_build_is_cached_switchable_and_falls_back(tmp_path):
    """One subprocess per situation, each with its own cache directory."""
    # Built once into the cache, then reused by the next process (same file, not rebuilt).
    cache = tmp_path / "cache"
    first = _run(_PROBE, CSR_JAX_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    assert "native-used True" in first.stdout
    (library,) = cache.glob("cpu_kernels-*.so")
    stamp = library.stat().st_mtime_ns
    second = _run(_PROBE, CSR_JAX_CACHE_DIR=str(cache))
    assert "native-used True" in second.stdout, second.stderr
    assert [p.name for p in cache.iterdir()] == [library.name]
    assert library.stat().st_mtime_ns == stamp
    # Switched off: the pure-XLA form, nothing built.
    off = _run(_PROBE, CSR_JAX_CACHE_DIR=str(tmp_path / "off"), CSR_JAX_NATIVE="0")
    assert "native-used False" in off.stdout, off.stderr
    assert not (tmp_path / "off").exists()
    # A compiler that fails: a warning that says what to do, and the same results without it.
    broken = _run(_PROBE, CSR_JAX_CACHE_DIR=str(tmp_path / "broken"), CXX="/bin/false")
    assert broken.returncode == 0, broken.stderr
    assert "native-used False" in broken.stdout
    assert "could not be built" in broken.stderr and "CSR_JAX_NATIVE=0" in broken.stderr
    # Several devices: XLA cannot partition a custom call, so the pure-XLA form is used.
    multi = _run(
        _PROBE,
        CSR_JAX_CACHE_DIR=str(cache),
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert "native-used False" in multi.stdout, multi.stderr
