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

    # Collecting the committed evidence alone rebuilds the same table.
    again = tmp_path / "AGAIN.md"
    assert (
        fashion_table.main(
            ["--collect", str(results), "--output", str(again), "--results_dir", str(results)]
        )
        == 0
    )
    assert _table_rows(again.read_text()) == rows
    assert (results / fashion_table.PLOT_NAME).stat().st_size > 1000
    assert f"({fashion_table.PLOT_NAME})" in again.read_text().replace("evidence/", "")


def test_plot_puts_each_run_at_its_params_and_accuracy(tmp_path):
    def row(csr, params, acc):
        summary = {
            "model": "resnet20",
            "csr": csr,
            "num_params": params,
            "eval_accuracy": acc,
            "step": 2340,
            "batch_size": 128,
            "image_shape": [28, 28, 1],
        }
        return fashion_table.Row(f"resnet20_{csr}", str(tmp_path), summary, {})

    rows = [row("t2", 141_598, 0.91), row(None, 269_434, 0.93), row("t4", 37_054, 0.88)]
    fig = fashion_table.plot_accuracy_vs_params(rows)
    ax = fig.axes[0]
    runs = [l for l in ax.lines if l.get_gid() == "runs:resnet20"]
    assert len(runs) == 1
    # Sorted by size, so the line reads as the trade-off curve.
    assert list(runs[0].get_xdata()) == [37_054, 141_598, 269_434]
    assert list(runs[0].get_ydata()) == [0.88, 0.91, 0.93]
    published = {l.get_gid() for l in ax.lines if (l.get_gid() or "").startswith("published:")}
    assert published == {f"published:{name}" for name, _, _ in fashion_table.PUBLISHED}
    assert ax.get_xscale() == "log"
    fig.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
