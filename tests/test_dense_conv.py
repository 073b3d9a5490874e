"""dense_conv (the CPU path of ordinary k x k convs: XLA's conv with its kernel gradient summed over
batch chunks) computes lax.conv_general_dilated, values and gradients; the conv factory and
CSRConv use it on the CPU path only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from csr_jax import CSRConv, depthwise


def _grads(impl, x, w, strides, padding):
    def loss(x, w):
        y = depthwise.dense_conv(x, w, strides, padding, impl=impl)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    return jax.value_and_grad(loss, (0, 1))(x, w)


@pytest.mark.parametrize(
    "k,strides,padding",
    [(3, 1, "SAME"), (3, 2, "SAME"), (5, 1, "VALID"), (3, 2, ((1, 0), (2, 1))), (5, 2, 2)],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_conv_equals_the_xla_conv(k, strides, padding, dtype, monkeypatch):
    # 7 images in chunks of 3 (3 + 3 + 1): uneven chunks, every image counted once.
    monkeypatch.setattr(depthwise, "_GRAD_CHUNK_MAX_IMAGES", 3)
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    rng = np.random.default_rng(k + strides)
    x = jnp.asarray(rng.standard_normal((7, 9, 8, 5)), dtype)
    w = jnp.asarray(rng.standard_normal((k, k, 5, 6)) * 0.3, dtype)
    got = _grads("taps", x, w, strides, padding)
    want = _grads("xla", x, w, strides, padding)
    assert got[1][1].dtype == w.dtype
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        # bf16: each chunk's kernel gradient is rounded to bf16 before the (float32) sum.
        tol = 1e-5 if dtype == jnp.float32 else 1e-2 * np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == jnp.float32 else 0, atol=tol)


def test_kernel_gradient_is_summed_over_chunks(monkeypatch):
    """The backward convolves chunks of the batch (3 + 3 + 1 images for 7 at most 3 a chunk)."""
    x, w = jnp.ones((7, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
    batches = []
    conv = depthwise._xla_conv

    def recording(x, *args):
        batches.append(x.shape[0])
        return conv(x, *args)

    monkeypatch.setattr(depthwise, "_GRAD_CHUNK_MAX_IMAGES", 3)
    monkeypatch.setattr(depthwise, "_xla_conv", recording)
    jax.grad(lambda w: jnp.sum(depthwise.dense_conv(x, w, 1, "SAME", impl="taps")))(w)
    assert sorted(b for b in batches if b < 7) == [1, 3, 3]


def test_conv_factory_and_csrconv_route_k_by_k_convs_on_the_cpu_path_only():
    x = jnp.ones((2, 6, 6, 4))
    conv = nn.Conv(8, (3, 3), conv_general_dilated=depthwise.conv_general_dilated())
    csr = CSRConv(8, 3, 2)
    for module in (conv, csr):
        variables = module.init(jax.random.key(0), x)
        traced = lambda: str(jax.make_jaxpr(module.apply)(variables, x))
        with depthwise.forced_impl("taps"):
            assert "custom_vjp_call" in traced()
        with depthwise.forced_impl("xla"):
            assert "custom_vjp_call" not in traced()
