"""The training library's pieces: optimizer and decay mask, schedules, loss, steps, configs."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from csr_jax import CSRConv, models
from csr_jax import data as data_lib
from csr_jax.train import (
    ConfigError,
    IncompatibleWorkdirError,
    check_batch_size,
    check_compatible,
    create_train_state,
    cross_entropy,
    global_batch,
    initialize_distributed,
    make_data_mesh,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    total_steps,
    weight_decay_mask,
)
from csr_jax.train.run_config import compute_dtype, csr_setting
from tests import train_support as support

CONFIG_DIR = support.REPO / "experiments" / "configs"
RUN_CONFIGS = sorted(
    p.name
    for p in CONFIG_DIR.glob("*.py")
    if p.name.startswith(("digits", "cifar10_", "imagenet_", "fashion_mnist_"))
    and not p.name.endswith("_common.py")
)


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
    support.enable_compile_cache(support.session_root(tmp_path_factory))


def _opt_config(**kw) -> ml_collections.ConfigDict:
    base = dict(
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        weight_decay_min_ndim=2,
        weight_decay_exclude="",
        schedule="constant",
        warmup_epochs=0.0,
        step_decay_epochs=30.0,
        step_decay_factor=0.5,
        num_epochs=None,
        num_train_steps=None,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _csr_params():
    model = models.create("resnet20", num_classes=10, csr="t2", widths=(4, 8, 8))
    return jax.eval_shape(
        lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 8, 8, 1)), train=False)
    )["params"]


def _named(tree) -> dict[str, object]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ----------------------------------------------------------------------------------------------
# Weight decay mask and optimizer.


def test_decay_mask_covers_kernels_and_spares_bn_bias_and_csr_scalars():
    mask = _named(weight_decay_mask(_csr_params()))
    decayed = {k for k, v in mask.items() if v}
    spared = {k for k, v in mask.items() if not v}
    assert any("['input_kernel']" in k for k in decayed)
    assert any("['hidden_kernel']" in k for k in decayed)
    assert any("['Dense_0']['kernel']" in k or "['kernel']" in k for k in decayed)
    for name in ("['alpha']", "['beta']", "['scale']", "['bias']"):
        hits = [k for k in mask if k.endswith(name)]
        assert hits, f"the CSR ResNet has no {name} parameter"
        assert all(k in spared for k in hits), name


def test_decay_mask_exclusion_regex_and_decay_everything():
    params = _csr_params()
    mask = _named(weight_decay_mask(params, exclude=r"hidden"))
    assert not any(v for k, v in mask.items() if "['hidden']" in k)
    assert any(v for k, v in mask.items() if "['input_kernel']" in k)
    assert all(jax.tree.leaves(weight_decay_mask(params, min_ndim=0)))


class _Tiny(nn.Module):
    """Conv (or CSR-Conv with `csr_steps` > 1), BatchNorm, ReLU, dense: compiles in a second."""

    num_classes: int = 3
    dtype: object = None
    width: int = 4
    csr_steps: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        if self.csr_steps > 1:
            x = CSRConv(self.width, 3, steps=self.csr_steps, dtype=self.dtype)(x)
        else:
            x = nn.Conv(self.width, (3, 3), dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(nn.relu(x).reshape(x.shape[0], -1))


def test_sgd_step_applies_coupled_decay_to_kernels_only():
    """One SGD step from zero momentum is p - lr * (g + wd * p * mask), as torch.optim.SGD."""
    model = _Tiny()
    lr, wd = 0.1, 0.01
    config = _opt_config(learning_rate=lr, weight_decay=wd)
    mesh = make_data_mesh()
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 5, 5, 2))
    y = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    schedule = make_schedule(config, 10, 100)
    tx = make_optimizer(config, schedule, variables["params"])
    state = create_train_state(model, tx, jax.random.PRNGKey(0), (5, 5, 2), mesh)
    params0 = jax.device_get(state.params)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, 3)).mean()

    grads = jax.device_get(jax.jit(jax.grad(loss))(params0))
    step = make_train_step(mesh, state, num_classes=3, learning_rate_fn=schedule)
    new_state, metrics = step(
        state,
        global_batch({"image": np.asarray(x), "label": np.asarray(y)}, mesh),
        jax.random.PRNGKey(2),
    )
    got = _named(jax.device_get(new_state.params))
    p0, g = _named(params0), _named(grads)
    for key in got:
        decay = wd * p0[key] if p0[key].ndim >= 2 else 0.0
        np.testing.assert_allclose(
            got[key], p0[key] - lr * (g[key] + decay), rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert float(metrics["learning_rate"]) == pytest.approx(lr)
    assert int(new_state.step) == 1


def test_unknown_optimizer_and_schedule_are_refused():
    with pytest.raises(ConfigError, match="'sgd' or 'adamw'"):
        make_optimizer(_opt_config(optimizer="lion"), optax.constant_schedule(0.1), {})
    with pytest.raises(ConfigError, match="cosine"):
        make_schedule(_opt_config(schedule="poly"), 10, 100)
    with pytest.raises(ConfigError, match="bfloat16"):
        compute_dtype(ml_collections.ConfigDict({"dtype": "fp8"}))


# ----------------------------------------------------------------------------------------------
# Schedules and length.


def test_step_schedule_halves_every_30_epochs():
    spe = 390
    schedule = make_schedule(_opt_config(schedule="step", learning_rate=0.05), spe, 200 * spe)
    for epoch, expected in [
        (0, 0.05),
        (29.9, 0.05),
        (30, 0.025),
        (59.9, 0.025),
        (60, 0.0125),
        (199, 0.05 * 0.5**6),
    ]:
        assert float(schedule(int(epoch * spe))) == pytest.approx(expected, rel=1e-6), epoch


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    spe, steps, peak = 10, 100, 0.4
    schedule = make_schedule(
        _opt_config(schedule="cosine", learning_rate=peak, warmup_epochs=2.0), spe, steps
    )
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(10)) == pytest.approx(peak / 2, rel=1e-5)
    assert float(schedule(20)) == pytest.approx(peak, rel=1e-5)
    mid = 20 + (steps - 20) // 2
    assert float(schedule(mid)) == pytest.approx(
        peak * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-4
    )
    assert float(schedule(steps)) == pytest.approx(0.0, abs=1e-7)


def test_total_steps_prefers_num_train_steps_then_epochs():
    assert total_steps(_opt_config(num_train_steps=7, num_epochs=3.0), 100) == 7
    assert total_steps(_opt_config(num_epochs=2.5), 100) == 250
    with pytest.raises(ConfigError, match="num_epochs or config.num_train_steps"):
        total_steps(_opt_config(), 100)


# ----------------------------------------------------------------------------------------------
# Loss and steps.


def test_label_smoothing_cross_entropy_matches_its_definition():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = jnp.array([0, 2])
    eps, k = 0.1, 3
    logp = jax.nn.log_softmax(logits)
    target = np.full((2, k), eps / k)
    target[np.arange(2), np.asarray(labels)] += 1 - eps
    expected = -(target * np.asarray(logp)).sum(-1)
    np.testing.assert_allclose(cross_entropy(logits, labels, k, eps), expected, rtol=1e-6)
    np.testing.assert_allclose(
        cross_entropy(logits, labels, k),
        -np.asarray(logp)[np.arange(2), np.asarray(labels)],
        rtol=1e-6,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loss_decreases_on_a_fixed_batch(dtype):
    """A small CSR-Conv network memorises one batch, in float32 and in bfloat16 compute."""
    compute = compute_dtype(ml_collections.ConfigDict({"dtype": dtype}))
    assert compute == {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    model = _Tiny(num_classes=10, dtype=compute, width=16, csr_steps=2)
    mesh = make_data_mesh()
    config = _opt_config(learning_rate=0.5)
    schedule = make_schedule(config, 10, 100)
    params = jax.eval_shape(
        lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 8, 8, 3)), train=False)
    )["params"]
    state = create_train_state(
        model, make_optimizer(config, schedule, params), jax.random.PRNGKey(0), (8, 8, 3), mesh
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    rng = np.random.default_rng(0)
    batch = global_batch(
        {
            "image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 10, 16).astype(np.int32),
        },
        mesh,
    )
    step = make_train_step(mesh, state, num_classes=10, learning_rate_fn=schedule)
    losses = []
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    assert logits.dtype == compute
    assert "alpha" in state.params["CSRConv_0"]["hidden"]  # It is a CSR network.
    for _ in range(15):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
        losses.append(float(metrics["loss"]))
        assert float(metrics["nonfinite"]) == 0.0
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))


def test_eval_step_counts_only_masked_in_rows():
    model = _Tiny()
    mesh = make_data_mesh()
    config = _opt_config()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 2)), train=False)
    state = create_train_state(
        model,
        make_optimizer(config, optax.constant_schedule(0.1), variables["params"]),
        jax.random.PRNGKey(0),
        (5, 5, 2),
        mesh,
    )
    eval_step = make_eval_step(mesh, state, num_classes=3)
    x = np.random.default_rng(1).normal(size=(8, 5, 5, 2)).astype(np.float32)
    logits = np.asarray(
        model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    )
    y = np.argmax(logits, -1).astype(np.int32)
    y[:3] = (y[:3] + 1) % 3  # Rows 0-2 wrong, rows 3-7 right.
    mask = np.array([True, True, False, False, True, True, True, False])
    sums = jax.device_get(
        eval_step(state, global_batch({"image": x, "label": y, "mask": mask}, mesh))
    )
    assert float(sums["count"]) == 5
    assert float(sums["correct"]) == 3  # Rows 4, 5, 6.
    logp = jax.nn.log_softmax(logits)
    expected_loss = -sum(float(logp[i, y[i]]) for i in np.flatnonzero(mask))
    assert float(sums["loss"]) == pytest.approx(expected_loss, rel=1e-5)


def test_eval_step_reports_top5_from_100_classes():
    model = _Tiny(num_classes=100)
    mesh = make_data_mesh()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 2)), train=False)
    state = create_train_state(
        model,
        make_optimizer(_opt_config(), optax.constant_schedule(0.1), variables["params"]),
        jax.random.PRNGKey(0),
        (5, 5, 2),
        mesh,
    )
    x = np.random.default_rng(2).normal(size=(4, 5, 5, 2)).astype(np.float32)
    logits = np.asarray(
        model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    )
    order = np.argsort(-logits, axis=-1)
    y = np.array([order[0, 0], order[1, 3], order[2, 4], order[3, 5]], np.int32)  # Ranks 1,4,5,6.
    sums = jax.device_get(
        make_eval_step(mesh, state, num_classes=100)(
            state, global_batch({"image": x, "label": y, "mask": np.ones(4, bool)}, mesh)
        )
    )
    assert float(sums["correct"]) == 1 and float(sums["correct_top5"]) == 3


def test_partial_multi_process_flags_are_refused():
    with pytest.raises(ValueError, match="--num_processes"):
        initialize_distributed("auto", coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        initialize_distributed("sometimes")
    assert initialize_distributed("off") is False


def test_batch_size_errors_say_what_to_use():
    mesh = make_data_mesh()
    with pytest.raises(ConfigError, match="must be positive"):
        check_batch_size(0, mesh)
    check_batch_size(3, mesh)  # One device: anything positive splits.


# ----------------------------------------------------------------------------------------------
# Workdir identity.


def test_incompatible_config_names_every_differing_field(tmp_path):
    saved = {
        "dataset": "digits",
        "num_classes": 10,
        "image_shape": [16, 16, 1],
        "model": "resnet20",
        "model_overrides": {},
        "csr": "t2",
        "optimizer": "sgd",
        "batch_size": 64,
        "seed": 0,
        "learning_rate": 0.1,
    }
    check_compatible(saved, dict(saved, learning_rate=0.01), str(tmp_path))  # Not identity.
    now = dict(saved, model="resnet32", csr=None, num_classes=100)
    with pytest.raises(IncompatibleWorkdirError) as e:
        check_compatible(saved, now, str(tmp_path))
    msg = str(e.value)
    for field in ("model", "csr", "num_classes"):
        assert f"{field}: saved" in msg
    assert "dataset: saved" not in msg and "new --workdir" in msg


# ----------------------------------------------------------------------------------------------
# Experiment configs.


def _load(name: str, arg=None):
    return support.load_config(CONFIG_DIR / name, arg)


def test_all_required_configs_exist():
    expected = {
        "digits.py",
        "cifar10_vgg16.py",
        "cifar10_resnet56.py",
        "cifar10_resnet110.py",
        "cifar10_densenet40.py",
        "cifar10_mobilenetv2.py",
        "imagenet_resnet50.py",
        "imagenet_mobilenetv2.py",
        "imagenet_efficientnet_b0.py",
    }
    assert expected <= set(RUN_CONFIGS)


@pytest.mark.parametrize("name", RUN_CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_is_complete_and_names_real_models_presets_and_datasets(name, arg):
    config = _load(name, arg)
    for field in (
        "seed",
        "dataset",
        "model",
        "csr",
        "batch_size",
        "checkpoint_every_steps",
        "eval_every_steps",
        "data_dir",
        "image_size",
        "dtype",
        "optimizer",
        "learning_rate",
        "momentum",
        "weight_decay",
        "schedule",
    ):
        assert field in config, field
    assert config.num_epochs or config.num_train_steps
    assert config.model in models.list_models()
    assert config.dataset in data_lib.list_datasets()
    assert csr_setting(config) is not None, "every experiment trains a CSR network by default"
    assert models.get_policy(config.model, csr_setting(config)) is not None
    config.csr = "none"
    assert csr_setting(config) is None
    if arg == "runlocal":
        assert config.num_train_steps <= 5 and config.batch_size <= 16


def test_unknown_config_variant_is_refused():
    with pytest.raises(ValueError, match="runlocal"):
        _load("cifar10_resnet56.py", "fast")


def test_mobilenetv2_cifar_config_is_the_reference_recipe():
    config = _load("cifar10_mobilenetv2.py")
    assert (config.model, config.csr, config.dataset) == (
        "mobilenetv2_cifar",
        "reference",
        "cifar10",
    )
    assert (
        config.optimizer,
        config.learning_rate,
        config.momentum,
        config.weight_decay,
        config.batch_size,
    ) == ("sgd", 0.05, 0.9, 5e-4, 128)
    schedule = make_schedule(config, 390, total_steps(config, 390))
    assert float(schedule(30 * 390 - 1)) == pytest.approx(0.05)
    assert float(schedule(30 * 390)) == pytest.approx(0.025)
