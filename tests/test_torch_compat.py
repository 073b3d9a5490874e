"""The authors' MobileNetV2 initialisation and PyTorch's BatchNorm running variance."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from csr_jax import models
from csr_jax.models.torch_compat import TorchStatsBatchNorm, torch_default_bias_init


@pytest.fixture(scope="module")
def cifar_params():
    """One init of the CSR reference CIFAR MobileNetV2 at 32x32, batch 1."""
    model = models.create("mobilenetv2_cifar", num_classes=10, csr="reference")
    variables = jax.jit(
        lambda k: model.init({"params": k}, jnp.zeros((1, 32, 32, 3)), train=False)
    )(jax.random.key(0))
    return jax.tree.map(np.asarray, variables["params"])


def _conv_std(k: int, c_out: int) -> float:
    return math.sqrt(2.0 / (k * k * c_out))


def test_ordinary_convs_are_normal_with_the_authors_std(cifar_params):
    p = cifar_params
    stem, dw17, head = (
        p["stem"]["kernel"],
        p["block_17"]["depthwise"]["kernel"],
        p["head"]["kernel"],
    )
    assert stem.shape == (3, 3, 3, 32) and dw17.shape == (3, 3, 1, 960)
    # 864, 8640 and 409600 draws: the sample std is within a few percent of the law's.
    assert np.std(stem) == pytest.approx(_conv_std(3, 32), rel=0.1)  # 0.083
    assert np.std(dw17) == pytest.approx(_conv_std(3, 960), rel=0.05)  # 0.015
    assert np.std(head) == pytest.approx(_conv_std(1, 1280), rel=0.02)
    # Normal, not uniform: a uniform law with this std would stay within sqrt(3) std.
    assert np.abs(head).max() > 3 * _conv_std(1, 1280)


def test_csr_kernels_keep_pytorchs_default_init(cifar_params):
    expand = cifar_params["block_9"]["expand"]  # 64 -> 384 with T=3: U is 1x1, 22 -> 128.
    kernels = [v for v in jax.tree.leaves(expand) if v.ndim == 4]
    assert kernels
    for kernel in kernels:
        bound = 1.0 / math.sqrt(kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
        assert np.abs(kernel).max() <= bound
        assert np.std(kernel) == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_classifier_is_pytorchs_linear_default_with_a_nonzero_bias(cifar_params):
    kernel, bias = cifar_params["classifier"]["kernel"], cifar_params["classifier"]["bias"]
    bound = 1.0 / math.sqrt(1280)
    assert np.abs(kernel).max() <= bound and np.std(kernel) == pytest.approx(
        bound / math.sqrt(3), rel=0.05
    )
    assert np.all(bias != 0) and np.abs(bias).max() <= bound
    assert len(np.unique(bias)) == bias.size


def test_the_imagenet_network_keeps_torchvisions_classifier():
    model = models.create("mobilenetv2", num_classes=1000)
    shapes = jax.eval_shape(
        lambda k: model.init({"params": k}, jnp.zeros((1, 64, 64, 3)), train=False),
        jax.random.key(0),
    )
    assert shapes["params"]["classifier"]["bias"].shape == (1000,)
    bias = nn.Dense(4).init(jax.random.key(0), jnp.zeros((1, 3)))["params"]["bias"]
    assert not np.any(bias)  # Flax's zeros: what classifier() keeps for the ImageNet net.


def test_torch_default_bias_init_bounds():
    draws = np.asarray(torch_default_bias_init(100)(jax.random.key(1), (10_000,)))
    assert np.abs(draws).max() <= 0.1 and np.abs(draws).max() > 0.099
    with pytest.raises(ValueError):
        torch_default_bias_init(0)


def test_torch_stats_batchnorm_running_var_is_unbiased():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5)) * 2.0 + 1.0
    n = 4 * 3 * 3
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
    torch_bn = TorchStatsBatchNorm(use_running_average=False, momentum=0.9)
    variables = flax_bn.init(jax.random.key(1), x)
    assert jax.tree.structure(torch_bn.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    y_flax, s_flax = flax_bn.apply(variables, x, mutable=["batch_stats"])
    y_torch, s_torch = torch_bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(y_flax, y_torch)  # Training normalises the same way.
    np.testing.assert_array_equal(s_flax["batch_stats"]["mean"], s_torch["batch_stats"]["mean"])
    # var <- 0.9 * 1 + 0.1 * v: the batch-variance part is n / (n - 1) times Flax's.
    np.testing.assert_allclose(
        s_torch["batch_stats"]["var"] - 0.9,
        (s_flax["batch_stats"]["var"] - 0.9) * n / (n - 1),
        rtol=1e-5,
    )
    unbiased = np.var(np.asarray(x).reshape(-1, 5), axis=0, ddof=1)
    np.testing.assert_allclose(s_torch["batch_stats"]["var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
    # Eval: the running statistics are used as they are, by both.
    eval_vars = {"params": variables["params"], **s_torch}
    np.testing.assert_array_equal(
        nn.BatchNorm(use_running_average=True).apply(eval_vars, x),
        TorchStatsBatchNorm(use_running_average=True).apply(eval_vars, x),
    )


def test_mobilenetv2_flag_switches_every_batchnorm():
    """A two-block MobileNetV2 with and without the flag: same params, same train output, every
    BN's running variance scaled by its own n / (n - 1) (n = 2 x 8 x 8 or 2 x 4 x 4)."""
    cfg = ((1, 8, 1, 1), (2, 8, 1, 2))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    out = {}
    for flag in (False, True):
        model = models.create(
            "mobilenetv2_cifar", num_classes=3, cfg=cfg, width_mult=0.25, torch_batchnorm_stats=flag
        )
        variables = model.init({"params": jax.random.key(1)}, x, train=False)
        y, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
        out[flag] = (variables, y, stats["batch_stats"])
    assert jax.tree.structure(out[False][0]) == jax.tree.structure(out[True][0])
    np.testing.assert_allclose(out[False][1], out[True][1], rtol=1e-6)
    flat_f = dict(jax.tree_util.tree_flatten_with_path(out[False][2])[0])
    flat_t = dict(jax.tree_util.tree_flatten_with_path(out[True][2])[0])
    ratios = set()
    for path, var_f in flat_f.items():
        if jax.tree_util.keystr(path).endswith("['var']"):
            ratio = np.asarray((flat_t[path] - 0.9) / (var_f - 0.9))
            # float32 (v - 0.9) with v near 0.9: about 1e-5 relative noise.
            assert np.allclose(ratio, ratio.flat[0], rtol=1e-3), jax.tree_util.keystr(path)
            ratios.add(round(float(np.median(ratio)), 3))
    assert ratios == {round(128 / 127, 3), round(32 / 31, 3)}
