"""FusedBatchNorm (custom backward on the CPU path) computes nn.BatchNorm: outputs, running
statistics, gradients of every input and parameter, second order; same variables; the backend
choice follows the depthwise switch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from csr_jax import depthwise
from csr_jax.models import create
from csr_jax.models.batch_norm import FusedBatchNorm, batch_norm_train
from csr_jax.models.torch_compat import TorchStatsBatchNorm

SHAPE = (4, 5, 3, 6)


def _inputs(dtype, seed=0, constant_channel=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE) * 2.0 + 1.5
    if constant_channel:
        x[..., 2] = 0.75  # zero batch variance: the clipped variance has no gradient
    cot = rng.standard_normal(SHAPE)
    return jnp.asarray(x, dtype), jnp.asarray(cot, dtype)


def _variables(module, x, seed=1):
    variables = module.init(jax.random.key(0), x)
    # Non-trivial parameters and running statistics, so every term of the gradient is exercised.
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    return jax.tree.map(
        lambda v: v + 0.3 * jax.random.normal(next(keys), v.shape, v.dtype), variables
    )


def _loss(module, variables, cot, post=None):
    """A training-mode loss that also depends on the updated running statistics, so the
    cotangents of the batch mean and variance are non-zero."""

    def loss(params, x):
        y, updated = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            mutable=["batch_stats"],
        )
        if post is not None:
            y = post(y)
        stats = updated["batch_stats"]
        value = jnp.sum(jnp.clip(y.astype(jnp.float32), 0, 6) * cot.astype(jnp.float32))
        return value + jnp.sum(stats["var"] ** 2) + 3.0 * jnp.sum(stats["mean"]), (y, stats)

    return loss


def _run(module, variables, x, cot, post=None):
    loss = _loss(module, variables, cot, post)
    (value, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables["params"], x
    )
    return value, y, stats, grads


def _assert_close(a, b, tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(
            np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=tol, atol=tol
        )


@pytest.mark.parametrize("constant_channel", [False, True], ids=["varied", "constant-channel"])
@pytest.mark.parametrize("kind", ["flax", "torch-stats"])
def test_fused_equals_flax_f32(kind, constant_channel):
    x, cot = _inputs(jnp.float32, constant_channel=constant_channel)
    cls = TorchStatsBatchNorm if kind == "torch-stats" else FusedBatchNorm
    fused = cls(use_running_average=False)
    variables = _variables(fused, x)
    with depthwise.forced_impl("taps"):
        got = _run(fused, variables, x, cot)
    with depthwise.forced_impl("xla"):  # the same module, run as nn.BatchNorm
        want = _run(fused, variables, x, cot)
    _assert_close(got, want, 2e-5)
    if kind == "flax":  # and nn.BatchNorm itself
        _assert_close(got, _run(nn.BatchNorm(use_running_average=False), variables, x, cot), 2e-5)


def test_fused_equals_flax_f64():
    with jax.enable_x64(True):
        x, cot = _inputs(jnp.float64)
        fused = FusedBatchNorm(use_running_average=False, param_dtype=jnp.float64)
        variables = _variables(fused, x)
        with depthwise.forced_impl("taps"):
            got = _run(fused, variables, x, cot)
        want = _run(
            nn.BatchNorm(use_running_average=False, param_dtype=jnp.float64), variables, x, cot
        )
        _assert_close(got, want, 1e-12)


def test_fused_equals_flax_bf16():
    x, cot = _inputs(jnp.bfloat16)
    fused = FusedBatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    variables = _variables(fused, x)
    with depthwise.forced_impl("taps"):
        value, y, stats, grads = _run(fused, variables, x, cot)
    want = _run(nn.BatchNorm(use_running_average=False, dtype=jnp.bfloat16), variables, x, cot)
    assert y.dtype == want[1].dtype == jnp.bfloat16
    assert grads[1].dtype == jnp.bfloat16
    _assert_close(stats, want[2], 1e-5)  # float32 statistics from the same bf16 input
    _assert_close((value, y, grads), (want[0], want[1], want[3]), 3e-2)


def test_second_order_equals_flax():
    x, cot = _inputs(jnp.float32)
    fused = FusedBatchNorm(use_running_average=False)
    variables = _variables(fused, x)

    def grad_norm(module):
        loss = _loss(module, variables, cot)
        g = lambda p, x: jax.grad(lambda p, x: loss(p, x)[0], argnums=(0, 1))(p, x)
        sq = lambda p, x: sum(jnp.sum(t**2) for t in jax.tree.leaves(g(p, x)))
        return jax.grad(sq, argnums=(0, 1))(variables["params"], x)

    with depthwise.forced_impl("taps"):
        got = grad_norm(fused)
    _assert_close(got, grad_norm(nn.BatchNorm(use_running_average=False)), 1e-3)


def test_backend_choice_follows_the_depthwise_switch():
    x, _ = _inputs(jnp.float32)
    fused = FusedBatchNorm(use_running_average=False)
    variables = _variables(fused, x)

    def jaxpr():
        f = lambda v, x: fused.apply(v, x, mutable=["batch_stats"])[0]
        return str(jax.make_jaxpr(f)(variables, x))

    with depthwise.forced_impl("taps"):
        assert "custom_vjp_call" in jaxpr()
        with pytest.raises(TypeError, match="forward-mode"):
            jax.jvp(lambda x: fused.apply(variables, x, mutable=["batch_stats"])[0], (x,), (x,))
    with depthwise.forced_impl("xla"):
        assert "custom_vjp_call" not in jaxpr()
        jax.jvp(lambda x: fused.apply(variables, x, mutable=["batch_stats"])[0], (x,), (x,))
    assert ("custom_vjp_call" in jaxpr()) == (jax.default_backend() == "cpu")


def test_eval_and_unfused_configurations_are_nn_batchnorm():
    x, cot = _inputs(jnp.float32)
    for kwargs in ({"use_scale": False}, {"use_fast_variance": False}):
        fused = FusedBatchNorm(use_running_average=False, **kwargs)
        variables = _variables(fused, x)
        with depthwise.forced_impl("taps"):
            got = _run(fused, variables, x, cot)
        _assert_close(
            got, _run(nn.BatchNorm(use_running_average=False, **kwargs), variables, x, cot), 1e-6
        )
    fused, flax_bn = (
        FusedBatchNorm(use_running_average=True),
        nn.BatchNorm(use_running_average=True),
    )
    variables = _variables(fused, x)
    with depthwise.forced_impl("taps"):
        _assert_close(fused.apply(variables, x), flax_bn.apply(variables, x), 0.0)


def test_same_variables_as_nn_batchnorm():
    x, _ = _inputs(jnp.float32)
    shapes = lambda m: jax.tree.map(lambda v: (v.shape, v.dtype), m.init(jax.random.key(0), x))
    assert shapes(FusedBatchNorm(use_running_average=False)) == shapes(
        nn.BatchNorm(use_running_average=False)
    )


def test_backbones_train_with_it():
    """A backbone's training forward traces one fused BatchNorm per BatchNorm layer on the CPU
    path and none on the XLA path (traced only: no compile)."""
    model = create("resnet20", num_classes=10)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    n_bn = (
        sum(
            "bn" in jax.tree_util.keystr(p)
            for p, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        )
        // 2
    )

    def count():
        f = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
        # Its convs are custom_vjp calls on the CPU path too (depthwise.dense_conv): count by name
        # (the native or the XLA form of batch_norm_train).
        jaxpr = str(jax.make_jaxpr(f)(variables, x))
        return jaxpr.count("name=_native_train") + jaxpr.count("name=_xla_train")

    with depthwise.forced_impl("taps"):
        assert n_bn > 10 and count() == n_bn
    with depthwise.forced_impl("xla"):
        assert count() == 0


def test_batch_norm_train_function_shapes():
    x, _ = _inputs(jnp.float32)
    y, mean, var = batch_norm_train(x, jnp.ones(6), jnp.zeros(6), 1e-5)
    assert y.shape == x.shape and mean.shape == var.shape == (6,)
    np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).std(axis=(0, 1, 2)), 1.0, atol=1e-3)


@pytest.mark.parametrize("activation", [nn.relu6, nn.relu, nn.silu], ids=["relu6", "relu", "silu"])
def test_fused_activation_equals_flax_then_activation(activation):
    x, cot = _inputs(jnp.float32)
    fused = FusedBatchNorm(use_running_average=False, activation=activation)
    variables = _variables(fused, x)
    with depthwise.forced_impl("taps"):
        got = _run(fused, variables, x, cot)
    with depthwise.forced_impl("xla"):
        unfused = _run(fused, variables, x, cot)
    want = _run(nn.BatchNorm(use_running_average=False), variables, x, cot, post=activation)
    _assert_close(got, want, 2e-5)
    _assert_close(unfused, want, 2e-5)
