"""Every shipped config's `:runlocal` trains to a summary.json with `mock_data=True`, on any machine.

CIFAR, ImageNet and Fashion-MNIST configs read tfds mock examples (no prepared files), digits
ships with scikit-learn; model, pipeline, augmentation, masked eval and checkpointing are the
real ones. The runs are in-process (one JAX start for all); one more goes through the command
line, to check that `--config.mock_data=True` is accepted there.
"""

from __future__ import annotations

import json
import math

import pytest

from csr_jax.train import train_and_evaluate
from tests import train_support as support

pytest.importorskip("tensorflow_datasets")

CONFIG_DIR = support.REPO / "experiments" / "configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py") if "def get_config" in p.read_text())


def test_every_config_file_is_found():
    assert len(CONFIGS) >= 12, CONFIGS
    assert {"digits.py", "cifar10_mobilenetv2.py", "imagenet_efficientnet_b0.py"} <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
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
