"""`python -m experiments.report` and `csr_jax.report` on real (short) digits training runs.

Two real runs of the default digits config (CSR and ordinary ResNet-20, shrunk to a few steps of
a narrow network so both finish in about half a minute) are made once per session; every check
reads the files the training loop really wrote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from csr_jax import report
from experiments import report as report_cli
from experiments.configs import digits
from tests import train_support as support

pytestmark = pytest.mark.slow  # Two real (short) training runs.

NUM_STEPS = 4


def _train(workdir: Path, csr: str) -> dict:
    from csr_jax.train import train_and_evaluate

    config = digits.get_config()
    config.csr = csr
    config.num_train_steps = NUM_STEPS
    config.batch_size = 32
    config.model_overrides.widths = (4, 4, 8)  # Narrow: the test is about the files, not accuracy.
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 0
    config.tensorboard = False
    return train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The two runs, trained once per session: under pytest-xdist the workers share one directory
    (the parent of their base temp dirs) and a lock, so the runs are not repeated per worker.
    Tests must not modify them (they copy a run before changing it)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "report_runs"
    root.mkdir(parents=True, exist_ok=True)
    workdirs = {"t2": root / "csr_t2", "none": root / "ordinary"}
    with support.locked(root / "lock"):
        for csr, workdir in workdirs.items():
            if not (workdir / "summary.json").exists():
                shutil.rmtree(workdir, ignore_errors=True)  # A run a crashed worker left half-done.
                _train(workdir, csr)
    return workdirs


def _table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first Markdown table, as lists of cell strings."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [c[0] for c in report.TABLE_COLUMNS]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_command_writes_curves_png_and_summary_table(runs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = report_cli.main(
        ["--workdir", str(runs["t2"]), "--workdir", str(runs["none"]), "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err

    png = out / "report.png"
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.ptp(pixels[..., :3]) > 0.5  # Something was drawn, not a blank canvas.

    markdown = (out / "report.md").read_text()
    assert "![training curves](report.png)" in markdown
    rows = _table_rows(markdown)
    assert len(rows) == 2
    for row, csr in zip(rows, ("t2", "none")):
        summary = json.loads((runs[csr] / "summary.json").read_text())
        cells = dict(zip((c[1] for c in report.TABLE_COLUMNS), row))
        assert (cells["model"], cells["csr"], cells["dataset"]) == ("resnet20", csr, "digits")
        assert _num(cells["num_params"]) == summary["num_params"]
        assert _num(cells["step"]) == summary["step"] == NUM_STEPS
        assert _num(cells["eval_accuracy"]) == pytest.approx(summary["eval_accuracy"], abs=5e-5)
        assert _num(cells["eval_loss"]) == pytest.approx(summary["eval_loss"], abs=5e-5)
        assert _num(cells["images_per_sec"]) == pytest.approx(summary["images_per_sec"], abs=0.05)
        assert _num(cells["wall_time_s"]) == pytest.approx(summary["wall_time_s"], abs=0.05)
    # The CSR network is the smaller one; the table shows it, not a constant.
    assert _num(rows[0][3]) < _num(rows[1][3])
    printed = capsys.readouterr().out
    assert str(png.resolve()) in printed and "| resnet20 | t2 |" in printed


def test_loaded_history_agrees_with_the_summary(runs):
    run = report.load_run(runs["t2"])
    assert run.label == "resnet20 + CSR t2"
    steps, losses = run.series("train/loss")
    assert steps == list(range(1, NUM_STEPS + 1))  # log_every_steps=1.
    assert losses[-1] == pytest.approx(run.summary["train_loss"])
    eval_steps, accuracy = run.series("eval/accuracy")
    assert eval_steps == [2, NUM_STEPS]
    assert accuracy[-1] == pytest.approx(run.summary["eval_accuracy"])
    assert all(math.isfinite(v) for v in losses)
    assert report.load_run(runs["none"]).label == "resnet20 (ordinary)"


def test_a_directory_of_runs_is_expanded_and_default_out_is_the_workdir(runs, tmp_path):
    sweep = tmp_path / "sweep"
    for csr, workdir in runs.items():
        shutil.copytree(workdir, sweep / f"run_{csr}", ignore=shutil.ignore_patterns("checkpoints"))
    assert report_cli.main(["--workdir", str(sweep)]) == 0
    rows = _table_rows((sweep / "report.md").read_text())
    assert sorted(r[1] for r in rows) == ["none", "t2"]  # Subdirectories, sorted by name.
    assert (sweep / "report.png").stat().st_size > 0


def test_a_resumed_run_keeps_the_last_write_of_a_repeated_step(runs, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(runs["t2"], workdir, ignore=shutil.ignore_patterns("checkpoints"))
    with open(workdir / "metrics.jsonl", "a") as f:  # What a restart from step 3 appends.
        f.write(json.dumps({"step": 3, "time": 0.0, "train/loss": 123.0}) + "\n")
    steps, losses = report.load_run(workdir).series("train/loss")
    assert steps == list(range(1, NUM_STEPS + 1))
    assert losses[2] == 123.0


def test_same_labels_are_told_apart_by_workdir(runs, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(runs["t2"], copy, ignore=shutil.ignore_patterns("checkpoints"))
    labels = [r.label for r in report.load_runs([runs["t2"], copy])]
    assert labels == ["resnet20 + CSR t2 [csr_t2]", "resnet20 + CSR t2 [again]"]


def test_bad_workdirs_fail_with_what_to_do(runs, tmp_path, capsys):
    assert report_cli.main(["--workdir", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.RunNotFoundError, match="holds no training run"):
        report.load_runs([empty])

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs["t2"] / "metrics.jsonl", unfinished / "metrics.jsonl")
    with pytest.raises(report.RunNotFoundError, match="has not finished"):
        report.load_run(unfinished)

    damaged = tmp_path / "damaged"
    shutil.copytree(runs["t2"], damaged, ignore=shutil.ignore_patterns("checkpoints"))
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"line \d+ is not JSON"):
        report.load_run(damaged)
