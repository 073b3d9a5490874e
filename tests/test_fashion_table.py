"""The Fashion-MNIST results command end to end, on the real IDX files.

`python -m experiments.fashion_table --runs resnet20:none,resnet20:t2` is run (in-process) on the
`runlocal` variant for 2 steps of 8 real images each; the test then reads the table it wrote and
checks every row against the summary.json the training loop wrote, and that the evidence copied
for git is that same summary. Needs Debian's `dataset-fashion-mnist` (the CI script installs it);
skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import os

import pytest

from csr_jax.data import fashion_mnist
from experiments import fashion_table

pytestmark = pytest.mark.skipif(
    fashion_mnist.find_idx_files(fashion_mnist.DEFAULT_DIR) is None,
    reason=f"Fashion-MNIST IDX files not in {fashion_mnist.DEFAULT_DIR}: "
    "sudo apt-get install dataset-fashion-mnist",
)


def _table_rows(markdown: str) -> list[dict[str, str]]:
    """The first Markdown table of `markdown` as dicts keyed by its header."""
    lines = [l for l in markdown.splitlines() if l.startswith("| model | CSR preset |")]
    assert lines, "no results table header in the output"
    body = markdown.splitlines()
    start = body.index(lines[0])
    header = [c.strip() for c in body[start].strip("|").split(" | ")]
    rows = []
    for line in body[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip().strip("|").split(" | ")))))
    return rows


def test_runs_write_a_table_whose_rows_are_the_summaries(tmp_path):
    root, output, results = tmp_path / "runs", tmp_path / "RESULTS.md", tmp_path / "evidence"
    status = fashion_table.main(
        [
            "--runs",
            "resnet20:none,resnet20:t2",
            "--variant",
            "runlocal",
            "--num_train_steps",
            "2",
            "--set",
            "image_size=28",
            "--workdir_root",
            str(root),
            "--output",
            str(output),
            "--results_dir",
            str(results),
        ]
    )
    assert status == 0

    rows = _table_rows(output.read_text())
    assert [(r["model"], r["CSR preset"]) for r in rows] == [
        ("resnet20", "none"),
        ("resnet20", "t2"),
    ]
    summaries = {}
    for row in rows:
        workdir = root / f"resnet20_{row['CSR preset']}"
        summary = json.loads((workdir / "summary.json").read_text())
        summaries[row["CSR preset"]] = summary
        assert summary["dataset"] == "fashion_mnist" and summary["image_shape"] == [28, 28, 1]
        assert row["params"] == f"{summary['num_params']:,}"
        assert row["test accuracy"].startswith(f"{summary['eval_accuracy']:.4f}")
        assert f"({summary['eval_examples']} test images)" in row["test accuracy"]  # Capped eval.
        assert row["epochs"] == f"{2 * 8 / 60_000:.2f}"
        assert row["input"] == "28x28"
        assert row["train images/s"] == f"{summary['images_per_sec']:.1f}"
        assert row["wall time"] == f"{summary['wall_time_s'] / 60:.1f} min"

        # The evidence for git: the same summary, and a command that names this run's settings.
        name = row["command"].split("](")[0].lstrip("[")
        evidence = results / name
        assert json.loads((evidence / "summary.json").read_text()) == summary
        assert (evidence / "metrics.jsonl").is_file() and not (evidence / "checkpoints").exists()
        record = json.loads((evidence / "run.json").read_text())
        assert f"--config.csr={row['CSR preset']}" in record["command"]
        assert "--config.image_size=28" in record["command"]
        assert record["machine"]["cpu_cores"] == os.cpu_count()

    ordinary, csr = summaries["none"]["num_params"], summaries["t2"]["num_params"]
    assert csr < ordinary
    assert rows[0]["reduction"] == "baseline"
    assert rows[1]["reduction"] == f"{100 * (1 - csr / ordinary):.1f}%"

    # Collecting the committed evidence alone rebuilds the same table, followed by the
    # hand-written notes kept next to the evidence.
    (results / fashion_table.NOTES_NAME).write_text("## Recipe\n\nWhy this recipe.\n")
    again = tmp_path / "AGAIN.md"
    assert (
        fashion_table.main(
            ["--collect", str(results), "--output", str(again), "--results_dir", str(results)]
        )
        == 0
    )
    assert _table_rows(again.read_text()) == rows
    assert again.read_text().endswith("## Recipe\n\nWhy this recipe.\n")
    assert (results / fashion_table.PLOT_NAME).stat().st_size > 1000
    assert f"({fashion_table.PLOT_NAME})" in again.read_text().replace("evidence/", "")


def _row(tmp_path, csr, params, acc, seed=0, step=2344):
    summary = {
        "model": "resnet20",
        "csr": csr,
        "num_params": params,
        "eval_accuracy": acc,
        "step": step,
        "batch_size": 128,
        "image_shape": [28, 28, 1],
    }
    name = fashion_table.row_name(summary, seed)
    return fashion_table.Row(name, str(tmp_path), summary, {}, seed=seed)


def test_plot_puts_each_run_at_its_params_and_accuracy(tmp_path):
    rows = [
        _row(tmp_path, "t2", 141_598, 0.91),
        _row(tmp_path, None, 269_434, 0.93),
        _row(tmp_path, "t4", 37_054, 0.88),
    ]
    fig = fashion_table.plot_accuracy_vs_params(rows)
    ax = fig.axes[0]
    runs = [l for l in ax.lines if (l.get_gid() or "").startswith("runs:resnet20:")]
    assert len(runs) == 1
    assert runs[0].get_gid() == "runs:resnet20:5ep:28px"
    # Sorted by size, so the line reads as the trade-off curve.
    assert list(runs[0].get_xdata()) == [37_054, 141_598, 269_434]
    assert list(runs[0].get_ydata()) == [0.88, 0.91, 0.93]
    published = {l.get_gid() for l in ax.lines if (l.get_gid() or "").startswith("published:")}
    assert published == {f"published:{name}" for name, _, _ in fashion_table.PUBLISHED}
    assert ax.get_xscale() == "log"
    fig.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_seeds_of_one_setting_plot_as_their_mean_with_each_run_marked(tmp_path):
    rows = [
        _row(tmp_path, None, 269_434, 0.930, seed=0),
        _row(tmp_path, None, 269_434, 0.926, seed=1),
        _row(tmp_path, "t2", 141_598, 0.925, seed=0),
        # A different length is a different curve, not a point of the same trade-off.
        _row(tmp_path, None, 269_434, 0.90, step=702),
    ]
    ax = fashion_table.plot_accuracy_vs_params(rows).axes[0]
    lines = {l.get_gid(): l for l in ax.lines if l.get_gid()}
    six = lines["runs:resnet20:5ep:28px"]
    assert list(six.get_xdata()) == [141_598, 269_434]
    assert list(six.get_ydata()) == pytest.approx([0.925, 0.928])
    assert list(lines["runs:resnet20:1.5ep:28px"].get_ydata()) == [0.90]
    seeds = lines["seeds:resnet20:none:5ep:28px"]
    assert sorted(seeds.get_ydata()) == [0.926, 0.930]
    assert not any(g.startswith("seeds:resnet20:t2") for g in lines)  # One run: no seed markers.


def test_seed_noise_and_claims_use_every_seed_of_a_setting(tmp_path):
    rows = [
        _row(tmp_path, None, 269_434, 0.9300, seed=0),
        _row(tmp_path, None, 269_434, 0.9260, seed=1),
        _row(tmp_path, "t2", 141_598, 0.9250, seed=0),
        _row(tmp_path, "t2", 141_598, 0.9270, seed=1),
    ]
    for row in rows[2:]:
        row.reduction = 47.4
    assert [r.name for r in rows] == [
        "resnet20_none_5ep_28px",
        "resnet20_none_5ep_28px_s1",
        "resnet20_t2_5ep_28px",
        "resnet20_t2_5ep_28px_s1",
    ]
    noise = fashion_table.seed_noise_lines(rows)
    assert len(noise) == 2
    assert "mean 0.9280, range 0.40 points" in noise[0]
    assert "mean 0.9260, range 0.20 points" in noise[1]
    (claim,) = fashion_table.claim_lines(rows)
    # Means 0.9260 vs 0.9280: -0.20 points, within 0.5, with 47.4% fewer params.
    assert "accuracy -0.20 points" in claim and "**met**" in claim
    assert "mean of seeds 0, 1" in claim
    # One seed more on the CSR side that is far worse moves the mean, and the verdict.
    rows.append(_row(tmp_path, "t2", 141_598, 0.9100, seed=2))
    rows[-1].reduction = 47.4
    (claim,) = fashion_table.claim_lines(rows)
    assert "**not met**" in claim


def test_run_record_of_a_hand_launched_run_keeps_its_resume_history(tmp_path):
    """command.txt's first non-comment line is the command; its `#` lines (a resume after an
    OOM kill, ...) are kept as the record's history and listed under the command."""
    (tmp_path / "summary.json").write_text(json.dumps({"device_kind": "cpu", "num_devices": 1}))
    (tmp_path / "command.txt").write_text(
        "python -m experiments.train --workdir w\n"
        "# 00:32 UTC: OOM-killed; resumed from the step-117 checkpoint\n\n"
        "# 01:45 UTC: resumed from the step-533 checkpoint\n"
    )
    record = fashion_table.run_record(str(tmp_path), {"device_kind": "cpu", "num_devices": 1})
    assert record["command"] == "python -m experiments.train --workdir w"
    assert record["history"] == [
        "00:32 UTC: OOM-killed; resumed from the step-117 checkpoint",
        "01:45 UTC: resumed from the step-533 checkpoint",
    ]
