"""Read finished training runs back and compare them: learning curves and a summary table.

A run is a workdir written by :func:`csr_jax.train.train_and_evaluate`:

* ``summary.json`` — the run's headline numbers (model, csr, dataset, num_params, step,
  eval_accuracy, eval_loss, images_per_sec, wall_time_s, ...), written once the run finished;
* ``metrics.jsonl`` — one JSON object per write, ``{"step", "time", "train/<name>" ...}`` or
  ``{"step", "time", "eval/<name>" ...}``, appended as training goes.

This module only reads those files, so it needs neither JAX nor the model code; matplotlib is
imported only when a figure is drawn (the ``notebooks`` extra), so tables work without it. It
draws on ``matplotlib.figure.Figure`` directly (not ``pyplot``): the same function then works in a
notebook, where the figure is shown inline, and in a headless command, where it is saved as PNG,
without touching the global matplotlib backend.

Used by ``python -m experiments.report`` and by ``notebooks/03_train_digits.ipynb``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "SUMMARY_FILE",
    "METRICS_FILE",
    "Run",
    "RunNotFoundError",
    "find_runs",
    "load_run",
    "load_runs",
    "plot_curves",
    "run_colors",
    "legend_label",
    "markdown_table",
    "write_report",
]

# The file names the training loop writes (csr_jax.train.summary / csr_jax.train.metrics); kept
# as literals so that reading a report does not import the training code (and JAX) at all.
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


class RunNotFoundError(FileNotFoundError):
    """A workdir is not a finished training run (or holds none)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished training run: its summary, its metric history and a label for legends."""

    workdir: str
    summary: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]
    label: str

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one metric (e.g. ``'train/loss'``, ``'eval/accuracy'``), by step.

        A resumed run appends to metrics.jsonl and may repeat the steps between its last
        checkpoint and the interruption; the later write of a step is the one that belongs to
        the run that finished, so it wins.
        """
        by_step: dict[int, float] = {}
        for record in self.metrics:
            if key in record:
                by_step[int(record["step"])] = float(record[key])
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]


def csr_name(csr: Any) -> str:
    """How a summary's ``csr`` field reads in a table: a preset name, 'none' or 'custom policy'."""
    if csr is None:
        return "none"
    if isinstance(csr, str):
        return csr
    return "custom policy"  # The dict form of a CSRPolicy.


def _default_label(summary: dict[str, Any]) -> str:
    model = summary.get("model", "?")
    csr = summary.get("csr")
    return f"{model} (ordinary)" if csr is None else f"{model} + CSR {csr_name(csr)}"


def _is_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SUMMARY_FILE)) or os.path.isfile(
        os.path.join(path, METRICS_FILE)
    )


def find_runs(path: str | os.PathLike[str]) -> list[str]:
    """The run workdirs at ``path``: ``path`` itself if it is one, else its direct subdirectories
    that are (sorted), so a sweep's parent directory can be passed as a whole."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise RunNotFoundError(
            f"{path} is not a directory; pass the --workdir a training run wrote to."
        )
    if _is_run(path):
        return [path]
    runs = sorted(
        os.path.join(path, name) for name in os.listdir(path) if _is_run(os.path.join(path, name))
    )
    if not runs:
        raise RunNotFoundError(
            f"{path} holds no training run: neither it nor its subdirectories contain {SUMMARY_FILE} "
            f"or {METRICS_FILE}. Pass the --workdir given to `python -m experiments.train`."
        )
    return runs


def _read_metrics(path: str) -> tuple[dict[str, Any], ...]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}, line {number} is not JSON ({e}); the file is damaged."
                ) from e
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(
                    f"{path}, line {number} has no 'step' field; is this a training run's {METRICS_FILE}?"
                )
            records.append(record)
    return tuple(records)


def load_run(workdir: str | os.PathLike[str], label: str | None = None) -> Run:
    """Reads one finished run. ``label`` defaults to ``'<model> + CSR <preset>'`` or
    ``'<model> (ordinary)'``."""
    workdir = os.fspath(workdir)
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    metrics_path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(summary_path):
        hint = (
            "the run has not finished (or was preempted): rerun the same training command to resume it"
            if os.path.isfile(metrics_path)
            else "pass the --workdir given to `python -m experiments.train`"
        )
        raise RunNotFoundError(f"{workdir} has no {SUMMARY_FILE}; {hint}.")
    if not os.path.isfile(metrics_path):
        raise RunNotFoundError(
            f"{workdir} has {SUMMARY_FILE} but no {METRICS_FILE}; the metric history was deleted or the "
            "run was written by another tool."
        )
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    if not isinstance(summary, dict):
        raise ValueError(
            f"{summary_path} is not a JSON object; is this a training run's {SUMMARY_FILE}?"
        )
    metrics = _read_metrics(metrics_path)
    if not metrics:
        raise ValueError(f"{metrics_path} is empty: the run logged no metrics.")
    return Run(
        workdir=workdir, summary=summary, metrics=metrics, label=label or _default_label(summary)
    )


def load_runs(workdirs: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Reads every run under ``workdirs`` (each a run or a directory of runs, see
    :func:`find_runs`). Runs that would share a label get their workdir's name appended."""
    paths = [run for w in workdirs for run in find_runs(w)]
    if not paths:
        raise RunNotFoundError("No workdir given; pass at least one training run's workdir.")
    runs = [load_run(p) for p in paths]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    return [
        dataclasses.replace(r, label=f"{r.label} [{os.path.basename(os.path.normpath(r.workdir))}]")
        if counts[r.label] > 1
        else r
        for r in runs
    ]


#: The colours runs are drawn in (matplotlib's tab10 palette).
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def run_name(run: Run) -> str:
    """The name a run is known by across reports: its workdir's last component."""
    return os.path.basename(os.path.normpath(run.workdir))


def run_colors(runs: Sequence[Run]) -> list[str]:
    """One colour per run, chosen by a hash of :func:`run_name`: the same run keeps its colour in
    every report, whatever else is plotted with it and in which order. Two runs whose hashes
    collide in one report get distinct colours (the later one takes the next free colour)."""
    taken: set[int] = set()
    colors = []
    for run in runs:
        digest = hashlib.sha256(run_name(run).encode("utf-8")).digest()
        index = int.from_bytes(digest[:4], "big") % len(PALETTE)
        if len(taken) < len(PALETTE):
            while index in taken:
                index = (index + 1) % len(PALETTE)
        taken.add(index)
        colors.append(PALETTE[index])
    return colors


def legend_label(run: Run) -> str:
    """``'<label>, 35,974 params'``: the size is what a CSR comparison is about."""
    params = run.summary.get("num_params")
    return f"{run.label}, {params:,} params" if isinstance(params, int) else run.label


def _error_floor(runs: Sequence[Run]) -> float:
    """Where an error of exactly 0 is drawn on the log axis: half an example of the largest eval set."""
    sizes = [r.summary.get("eval_examples") for r in runs]
    largest = max((n for n in sizes if isinstance(n, int) and n > 0), default=10_000)
    return 0.5 / largest


def plot_curves(runs: Sequence[Run], *, title: str | None = None) -> Figure:
    """Loss and error (1 - accuracy) against step for every run in one figure, both on log scales.

    Log scales, because the differences that matter are small at the end of training: 0.98 vs
    0.99 accuracy is invisible on a 0-1 axis but is twice the error. Train curves are solid lines
    (means over each logging interval), eval curves dashed with markers; each run has one colour
    (:func:`run_colors`, stable across reports) and its parameter count in the legend. An error
    of 0 is drawn at half an example. Returns the figure (shown inline in a notebook;
    ``savefig`` it elsewhere).
    """
    if not runs:
        raise ValueError("plot_curves needs at least one run.")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_loss, ax_err = fig.subplots(1, 2)
    floor = _error_floor(runs)
    handles = []
    for run, color in zip(runs, run_colors(runs)):
        for split, style in (
            ("train", dict(lw=1.4)),
            ("eval", dict(lw=1.4, ls="--", marker="o", ms=4)),
        ):
            steps, losses = run.series(f"{split}/loss")
            if steps:
                ax_loss.plot(steps, losses, color=color, **style)
            steps, accuracy = run.series(f"{split}/accuracy")
            if steps:
                ax_err.plot(steps, [max(1.0 - a, floor) for a in accuracy], color=color, **style)
        handles.append(Line2D([], [], color=color, lw=2.5, label=legend_label(run)))
    handles.append(Line2D([], [], color="0.4", lw=1.4, label="train (mean per log interval)"))
    handles.append(Line2D([], [], color="0.4", lw=1.4, ls="--", marker="o", ms=4, label="eval"))
    ax_loss.set(xlabel="step", ylabel="cross-entropy loss (log scale)", title="loss", yscale="log")
    ax_err.set(
        xlabel="step", ylabel="error = 1 - accuracy (log scale)", title="error", yscale="log"
    )
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 3 rather than 3x10^0 on the log axes.
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        # Within one decade only minor ticks carry values; over several they would crowd the axis.
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())
    ax_err.legend(handles=handles, fontsize=8, loc="upper right")
    datasets = sorted({str(r.summary.get("dataset", "?")) for r in runs})
    fig.suptitle(title or f"training curves ({', '.join(datasets)})")
    return fig


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


#: Every headline field of a run's summary.json: ``field: (label, format spec)``. The training loop
#: prints them all when a run ends (``csr_jax.train.summary.format_table``); the Markdown table of
#: runs shows :data:`TABLE_COLUMNS`. Defined once, here, because this module loads no JAX.
SUMMARY_FIELDS: dict[str, tuple[str, str]] = {
    "model": ("model", ""),
    "csr": ("csr", ""),
    "dataset": ("dataset", ""),
    "num_params": ("params", ","),
    "step": ("steps", ","),
    "eval_accuracy": ("eval accuracy", ".4f"),
    "eval_top5_accuracy": ("eval top-5", ".4f"),
    "eval_loss": ("eval loss", ".4f"),
    "train_loss": ("train loss", ".4f"),
    "images_per_sec": ("train images/s", ",.1f"),
    "compile_time_s": ("first step (s)", ".1f"),
    "wall_time_s": ("wall time (s)", ".1f"),
    "device_kind": ("device", ""),
    "num_devices": ("devices", ""),
    "num_processes": ("processes", ""),
}

#: (column header, summary field, format spec) of the Markdown table.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    (SUMMARY_FIELDS[field][0], field, SUMMARY_FIELDS[field][1])
    for field in (
        "model",
        "csr",
        "dataset",
        "num_params",
        "eval_accuracy",
        "eval_loss",
        "step",
        "images_per_sec",
        "wall_time_s",
    )
)


def markdown_table(runs: Sequence[Run]) -> str:
    """A Markdown table with one row per run (columns :data:`TABLE_COLUMNS`).

    ``train images/s`` is throughput after the first (compiling) step; ``n/a`` where a run
    has no such number (a one-step run).
    """
    if not runs:
        raise ValueError("markdown_table needs at least one run.")
    header = "| " + " | ".join(c[0] for c in TABLE_COLUMNS) + " |"
    align = "| " + " | ".join("---" if not c[2] else "---:" for c in TABLE_COLUMNS) + " |"
    rows = [header, align]
    for run in runs:
        cells = []
        for _, field, spec in TABLE_COLUMNS:
            value = run.summary.get(field)
            cells.append(csr_name(value) if field == "csr" else _fmt(value, spec))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def write_report(
    runs: Sequence[Run], out_dir: str | os.PathLike[str], *, name: str = "report"
) -> tuple[str, str]:
    """Writes ``<out_dir>/<name>.png`` (curves) and ``<out_dir>/<name>.md`` (table + figure link).

    Returns the two paths.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{name}.png")
    md = os.path.join(out_dir, f"{name}.md")
    plot_curves(runs).savefig(png, dpi=120)
    lines = ["# Training runs", "", markdown_table(runs), f"![training curves]({name}.png)", ""]
    lines += ["Runs:", ""] + [f"- {r.label}: `{r.workdir}`" for r in runs] + [""]
    with open(md, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return png, md
