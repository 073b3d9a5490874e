"""The report figure: error on a log scale, parameter counts in the legend, stable colours.

Built from hand-made runs (no training), so these checks take a second.
"""

from __future__ import annotations

import pytest

from csr_jax import report

pytest.importorskip(
    "matplotlib", reason="pip install -e '.[notebooks]' (or '.[test]') installs matplotlib"
)


def _run(
    name: str, params: int, accuracies: list[float], model: str = "resnet20", csr: str | None = "t2"
) -> report.Run:
    metrics = []
    for i, acc in enumerate(accuracies, start=1):
        metrics.append({"step": 10 * i, "train/loss": 2.0 / i, "train/accuracy": min(acc, 1.0)})
        metrics.append({"step": 10 * i, "eval/loss": 2.1 / i, "eval/accuracy": acc})
    summary = {
        "model": model,
        "csr": csr,
        "dataset": "digits",
        "num_params": params,
        "eval_accuracy": accuracies[-1],
        "eval_examples": 360,
    }
    return report.Run(
        workdir=f"/runs/{name}",
        summary=summary,
        metrics=tuple(metrics),
        label=report._default_label(summary),
    )


def test_colours_follow_the_run_not_its_position():
    a, b, c = (
        _run("csr_t2", 35_974, [0.9]),
        _run("plain", 68_634, [0.9], csr=None),
        _run("seed1", 1, [0.5]),
    )
    colors_ab = dict(zip(["a", "b"], report.run_colors([a, b])))
    colors_ba = dict(zip(["b", "a"], report.run_colors([b, a])))
    assert colors_ab == colors_ba
    assert report.run_colors([a])[0] == report.run_colors([a, b, c])[0]  # Others do not move it.
    many = [_run(f"run{i}", i, [0.5]) for i in range(10)]
    assert len(set(report.run_colors(many))) == 10  # Collisions are resolved within a report.


def test_error_axis_is_logarithmic_with_params_in_the_legend():
    runs = [
        _run("csr_t2", 35_974, [0.90, 0.98, 0.99, 1.0]),
        _run("plain", 68_634, [0.90, 0.97, 0.985], csr=None),
    ]
    fig = report.plot_curves(runs)
    ax_loss, ax_err = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_err.get_yscale() == "log"
    assert "error" in ax_err.get_ylabel()
    legend = [t.get_text() for t in ax_err.get_legend().get_texts()]
    assert "resnet20 + CSR t2, 35,974 params" in legend
    assert "resnet20 (ordinary), 68,634 params" in legend
    # 0.98 vs 0.99 accuracy: a factor of two on the error axis, not a hair on a 0-1 axis.
    eval_line = [ln for ln in ax_err.get_lines() if ln.get_linestyle() == "--"][0]
    errors = list(eval_line.get_ydata())
    assert errors[:3] == pytest.approx([0.10, 0.02, 0.01])
    assert errors[3] == pytest.approx(0.5 / 360)  # Error 0 is drawn at half an example.
    assert eval_line.get_color() == report.run_colors(runs)[0]
