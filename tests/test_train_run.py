"""End-to-end runs: the default command, a CIFAR config under tfds mock data, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from csr_jax import data as data_lib
from csr_jax.data import DatasetNotFoundError
from csr_jax.train import ConfigError, NonFiniteLossError, train_and_evaluate
from tests import train_support as support

pytestmark = pytest.mark.slow  # End-to-end training runs.

SUMMARY_FIELDS = (
    "eval_accuracy",
    "eval_loss",
    "num_params",
    "step",
    "images_per_sec",
    "model",
    "csr",
    "dataset",
    "wall_time_s",
    "jax_version",
    "device_kind",
    "num_devices",
    "num_processes",
)


def test_default_command_trains_the_digits_csr_network(root, tmp_path):
    """`python -m experiments.train` (here cut to 3 steps) on the default config."""
    workdir = tmp_path / "run"
    proc = support.run_cli(
        ["--config.num_train_steps=3", f"--workdir={workdir}"], support.subprocess_env(root)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"workdir: {workdir}" in proc.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    for field in SUMMARY_FIELDS:
        assert field in summary, field
    assert (summary["model"], summary["csr"], summary["dataset"]) == ("resnet20", "t2", "digits")
    assert summary["step"] == 3 and summary["eval_examples"] == 360
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and math.isfinite(summary["eval_loss"])
    assert summary["num_params"] > 0 and summary["num_devices"] == 1
    assert "eval_top5_accuracy" not in summary  # Top-5 only from 100 classes.
    assert "eval accuracy" in proc.stdout and "resnet20" in proc.stdout  # The result table.
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in r for r in records)
    train = [r for r in records if "train/loss" in r]
    assert train and all("train/learning_rate" in r for r in train)
    assert any("train/images_per_sec" in r for r in train)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((workdir / "config.json").read_text())["csr"] == "t2"


def test_cifar_config_runs_under_tfds_mock_data(root, tmp_path):
    """`cifar10_vgg16.py:runlocal`, narrowed to one conv per stage so it compiles in seconds."""
    tfds = pytest.importorskip("tensorflow_datasets")
    config = support.load_config(support.REPO / "experiments/configs/cifar10_vgg16.py", "runlocal")
    config.model_overrides.widths = (4, 4, 8, 8, 8)
    config.model_overrides.depths = (1, 1, 1, 1, 1)
    config.num_train_steps = 1
    config.tensorboard = False
    with tfds.testing.mock_data(num_examples=24):
        summary = train_and_evaluate(config, str(tmp_path))
    assert (summary["model"], summary["csr"], summary["dataset"]) == (
        "vgg16_cifar",
        "t2",
        "cifar10",
    )
    assert summary["step"] == 1 and summary["num_classes"] == 10
    assert summary["eval_examples"] == 16  # eval_max_batches=2 batches of 8.
    assert math.isfinite(summary["eval_loss"]) and math.isfinite(summary["train_loss"])


# ----------------------------------------------------------------------------------------------
# Bad input: each fails fast, with a message that says what to do.


def _tiny(root: Path, arg=None):
    return support.load_config(support.write_tiny_config(root), arg)


@pytest.mark.parametrize(
    "field,value,error,message",
    [
        ("dataset", "mnist_nope", ConfigError, "Unknown config.dataset 'mnist_nope'"),
        ("model", "resnet_nope", ConfigError, "Unknown config.model 'resnet_nope'"),
        ("csr", "t_nope", ConfigError, "Unknown CSR preset 't_nope'"),
    ],
)
def test_unknown_names_are_refused_before_anything_is_written(
    root, tmp_path, field, value, error, message
):
    config = _tiny(root)
    config[field] = value
    workdir = tmp_path / "run"
    with pytest.raises(error, match=message):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_missing_dataset_names_the_prepare_command(root, tmp_path):
    config = _tiny(root)
    config.dataset = "cifar10"
    config.data_dir = str(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match="prepare_data cifar10"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_cli_prints_user_errors_without_a_traceback(root, tmp_path):
    proc = support.run_cli(
        ["--config.model=resnet_nope", f"--workdir={tmp_path}/run"],
        support.subprocess_env(root),
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: " in proc.stderr and "Unknown config.model 'resnet_nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(root, tmp_path, monkeypatch):
    """Batch 3 carries a NaN pixel: step 3's loss is NaN, checkpoints 1 and 2 stay finite."""
    support.reference_run(root)  # Same program: compiled once (persistent cache) for both.
    original = data_lib.make_train_iterator

    def poisoned(*args, **kwargs):
        it = original(*args, **kwargs)

        class Poisoned:
            count = 0

            def __next__(self):
                batch = dict(next(it))
                Poisoned.count += 1
                if Poisoned.count == 3:
                    batch["image"] = batch["image"].copy()
                    batch["image"][0, 0, 0, 0] = np.nan
                return batch

            def get_state(self):
                return it.get_state()

        return Poisoned()

    monkeypatch.setattr(data_lib, "make_train_iterator", poisoned)
    config = _tiny(root)
    config.checkpoint_every_steps = 1
    with pytest.raises(NonFiniteLossError) as e:
        train_and_evaluate(config, str(tmp_path))
    msg = str(e.value)
    assert "NaN/Inf at step 3 (learning rate" in msg
    assert "--config.learning_rate" in msg and "--config.dtype=float32" in msg
    assert "last good checkpoint (step 2)" in msg
    arrays = support.final_arrays(tmp_path)
    assert int(arrays["step"]) == 2
    for leaf in jax.tree.leaves(arrays["params"]):
        assert np.all(np.isfinite(leaf))
    assert not (tmp_path / "summary.json").exists()
