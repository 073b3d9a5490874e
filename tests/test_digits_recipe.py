"""The default recipe starts sane: residual blocks start as the identity, the first loss is ~ln 10.

The digits config (the default `python -m experiments.train`) sets the CIFAR ResNet's opt-in
`zero_init_residual`; without it the initial loss was 3.3-4.6 depending on the seed (10 classes,
ln 10 = 2.30) and rose in the first steps, and the final accuracy moved with float rounding.
The flag is off by default, so no other model changes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from csr_jax import models
from csr_jax.data.digits import load_digits
from csr_jax.train.run_config import model_overrides
from experiments.configs import digits


def _bn_scales(variables) -> dict[str, float]:
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    return {k: float(np.abs(v).max()) for k, v in flat.items() if k.endswith("/scale")}


def test_zero_init_residual_is_opt_in_and_zeroes_only_the_last_bn_of_each_block():
    x = jnp.ones((1, 16, 16, 1))
    plain = models.create("resnet20", num_classes=10, csr="t2", widths=(4, 4, 8))
    zero = models.create(
        "resnet20", num_classes=10, csr="t2", widths=(4, 4, 8), zero_init_residual=True
    )
    default_scales = _bn_scales(plain.init(jax.random.key(0), x, train=False))
    assert set(default_scales.values()) == {1.0}  # Unchanged default: every BN scale starts at 1.
    scales = _bn_scales(zero.init(jax.random.key(0), x, train=False))
    zeroed = sorted(k for k, v in scales.items() if v == 0.0)
    assert zeroed == sorted(f"block_{i}/bn2/scale" for i in range(1, 10))
    assert all(v == 1.0 for k, v in scales.items() if k not in zeroed)


def test_the_digits_config_starts_at_ln10():
    config = digits.get_config()
    overrides = model_overrides(config)
    assert overrides.get("zero_init_residual") is True
    data = load_digits(config.image_size)
    images = jnp.asarray(data["train_images"][: config.batch_size], jnp.float32)
    labels = jnp.asarray(data["train_labels"][: config.batch_size])
    model = models.create(config.model, num_classes=10, csr=config.csr, **overrides)

    @jax.jit
    def initial_loss(key):  # One compile for all seeds.
        variables = model.init(key, images[:1], train=False)
        logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    for seed in range(3):
        loss = float(initial_loss(jax.random.key(seed)))
        assert loss <= 1.5 * math.log(10), (seed, loss)
        assert loss == pytest.approx(math.log(10), abs=0.25), (seed, loss)
