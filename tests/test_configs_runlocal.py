"""Every shipped config's `:runlocal` works with `mock_data=True`, on any machine.

CIFAR, ImageNet and Fashion-MNIST configs read tfds mock examples (no prepared files), digits
ships with scikit-learn. One config per model builder and per dataset pipeline trains to a
summary.json (model, pipeline, augmentation, masked eval and checkpointing are the real ones);
the configs that only vary one of those already trained (ResNet-110 is ResNet-56's builder
deeper, the Fashion-MNIST ResNet-56 and MobileNetV2 and the ImageNet MobileNetV2 pair a trained
builder with a trained pipeline) have their whole train step traced on a real mock batch
(`jax.eval_shape`: config, policy, model, optimizer and step, without compiling). The runs are
in-process (one JAX start for all); one more goes through the command line, to check that
`--config.mock_data=True` is accepted there.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from csr_jax import data as data_lib
from csr_jax import models as models_lib
from csr_jax.train import optim, train_and_evaluate
from csr_jax.train.mesh import global_batch, make_data_mesh, replicated_sharding
from csr_jax.train.run_config import compute_dtype, csr_setting, model_overrides
from csr_jax.train.state import state_from_variables
from csr_jax.train.steps import make_train_step
from csr_jax.train.validate import validate_config
from tests import train_support as support

pytest.importorskip("tensorflow_datasets")

CONFIG_DIR = support.REPO / "experiments" / "configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py") if "def get_config" in p.read_text())
#: Configs whose model builder and dataset pipeline both train in another config's run.
TRACED_ONLY = (
    "cifar10_resnet110.py",
    "fashion_mnist_mobilenetv2.py",
    "fashion_mnist_resnet56.py",
    "imagenet_mobilenetv2.py",
)
TRAINED = [name for name in CONFIGS if name not in TRACED_ONLY]


def test_every_config_file_is_found():
    assert len(CONFIGS) >= 12, CONFIGS
    assert {"digits.py", "cifar10_mobilenetv2.py", "imagenet_efficientnet_b0.py"} <= set(CONFIGS)
    assert set(TRACED_ONLY) < set(CONFIGS)


def test_every_traced_only_config_pairs_a_trained_model_with_a_trained_dataset():
    """What a traced-only config skips (compiling and running) its model class (the builder)
    and its dataset do in other configs' runs."""

    def builder_and_dataset(name):
        config = support.load_config(CONFIG_DIR / name, "runlocal")
        model = models_lib.create(config.model, num_classes=10, **model_overrides(config))
        return type(model), config.dataset

    trained = [builder_and_dataset(name) for name in TRAINED]
    for name in TRACED_ONLY:
        builder, dataset = builder_and_dataset(name)
        assert builder in {b for b, _ in trained}, name
        assert dataset in {d for _, d in trained}, name


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_runlocal_with_mock_data_writes_a_summary(root, tmp_path, name):
    config = support.load_config(CONFIG_DIR / name, "runlocal")
    config.mock_data = True
    workdir = tmp_path / "run"
    summary = train_and_evaluate(config, str(workdir))
    written = json.loads((workdir / "summary.json").read_text())
    assert written["step"] == summary["step"] == config.num_train_steps
    assert written["dataset"] == config.dataset and written["model"] == config.model
    assert written["mock_data"] is True
    assert written["eval_examples"] == config.eval_batch_size * config.eval_max_batches
    assert math.isfinite(written["eval_loss"]) and math.isfinite(written["train_loss"])


@pytest.mark.parametrize("name", TRACED_ONLY)
def test_runlocal_train_step_traces_on_a_mock_batch(name):
    """The config's model (with its CSR policy), optimizer and train step, traced on the first
    batch of its real input pipeline: a loss and a new state of the state's own shapes."""
    config = support.load_config(CONFIG_DIR / name, "runlocal")
    config.mock_data = True
    csr = csr_setting(config)
    validate_config(config, csr)
    info = data_lib.get_info(config.dataset, image_size=config.get("image_size"), mock_data=True)
    model = models_lib.create(
        config.model,
        num_classes=info.num_classes,
        csr=csr,
        dtype=compute_dtype(config),
        check=False,
        **model_overrides(config),
    )
    variables = models_lib.abstract_init(model, tuple(info.image_shape), name=config.model)
    steps_per_epoch = max(1, info.num_train // config.batch_size)
    schedule = optim.make_schedule(
        config, steps_per_epoch, optim.total_steps(config, steps_per_epoch)
    )
    tx = optim.make_optimizer(config, schedule, variables["params"])
    mesh = make_data_mesh()
    state = jax.eval_shape(lambda v: state_from_variables(model, tx, v), variables)
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated_sharding(mesh)),
        state,
    )
    train_iter = data_lib.make_train_iterator(
        config.dataset,
        global_batch_size=config.batch_size,
        seed=0,
        image_size=config.get("image_size"),
        mock_data=True,
    )
    batch = global_batch(next(train_iter), mesh)
    assert batch["image"].shape == (config.batch_size, *info.image_shape)
    step = make_train_step(mesh, state, num_classes=info.num_classes, learning_rate_fn=schedule)
    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )
    assert metrics["loss"].shape == () and np.issubdtype(metrics["loss"].dtype, np.floating)


@pytest.mark.slow
def test_the_command_line_accepts_mock_data(root, tmp_path):
    workdir = tmp_path / "run"
    proc = support.run_cli(
        [
            "--config",
            f"{CONFIG_DIR / 'fashion_mnist_resnet20.py'}:runlocal",
            "--config.mock_data=True",
            "--config.data_dir=/nonexistent",
            f"--workdir={workdir}",
        ],
        support.subprocess_env(root),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["mock_data"] is True and summary["dataset"] == "fashion_mnist"
    assert json.loads((workdir / "config.json").read_text())["mock_data"] is True
