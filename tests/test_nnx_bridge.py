"""CSRConv (and a surgery-converted model) used from ``flax.nnx`` through ``nnx.bridge.ToNNX``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

from csr_jax import CSRConv
from csr_jax.policy import Rule
from csr_jax.surgery import convert


def _linen_params(module: nnx.Module) -> dict:
    """The bridged module's parameters as the plain nested dict a linen ``apply`` takes."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_to_nnx_matches_linen_and_trains():
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 10)).astype(np.float32)
    layer = CSRConv(9, 3, 3, strides=2, use_bias=True)
    model = nnx.bridge.ToNNX(layer, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, x)

    params = _linen_params(model)
    assert set(params) == {"input_kernel", "input_bias", "hidden"}
    assert params["input_kernel"].shape == (3, 3, 4, 3)  # g_in = ceil(10/3), g_out = ceil(9/3)
    y_nnx = model(x)
    y_linen = layer.apply({"params": params}, x)
    assert y_nnx.shape == (2, 4, 4, 9)
    np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-6, atol=1e-6)

    target = jnp.asarray(np.random.default_rng(1).normal(size=y_nnx.shape).astype(np.float32))
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

    def loss_fn(m):
        return jnp.mean((m(x) - target) ** 2)

    @nnx.jit
    def train_step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    loss0 = train_step(model, optimizer)
    after = _linen_params(model)
    for path in (
        ("input_kernel",),
        ("hidden", "hidden_kernel"),
        ("hidden", "alpha"),
        ("hidden", "beta"),
    ):
        old, new = params, after
        for key in path:
            old, new = old[key], new[key]
        assert not np.allclose(old, new), path
    loss1 = loss_fn(model)
    assert float(loss1) < float(loss0)
    # The nnx module still computes the linen layer with its (updated) parameters.
    np.testing.assert_allclose(model(x), layer.apply({"params": after}, x), rtol=1e-6, atol=1e-6)


def test_surgery_converted_model_through_nnx():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
            return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))

    x = np.random.default_rng(2).normal(size=(2, 6, 6, 4)).astype(np.float32)
    converted, report = convert(Tiny(), Rule(2), x)
    assert [r.path for r in report.converted] == ["conv"]
    model = nnx.bridge.ToNNX(converted, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, x)
    params = _linen_params(model)
    assert "input_kernel" in params["conv"] and "kernel" in params["head"]
    np.testing.assert_allclose(
        model(x), converted.apply({"params": params}, x), rtol=1e-6, atol=1e-6
    )
