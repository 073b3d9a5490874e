r"""Fashion-MNIST results table: ordinary vs CSR networks, next to the published benchmark.

Train a set of configs, then write the table (each run after the other, in this process):

  python -m experiments.fashion_table --runs resnet20:none,resnet20:t2 --epochs 30 \
      --workdir_root /tmp/fashion

or collect runs that already finished (workdirs of `python -m experiments.train`, or the
evidence folders this command commits under experiments/results/fashion_mnist/):

  python -m experiments.fashion_table --collect /tmp/fashion/resnet20_none /tmp/fashion/resnet20_t2
  python -m experiments.fashion_table --collect experiments/results/fashion_mnist

A run is `<config>:<csr>`: `<config>` names experiments/configs/fashion_mnist_<config>.py
(resnet20, resnet56, mobilenetv2) and `<csr>` a CSR preset of that model or `none`.

Every number in a row comes from the run itself: accuracy, params, steps, wall time and
images/s from its summary.json; epochs = images seen / 60,000; the reduction is relative to the
ordinary run of the same model and input size in the same table; MACs (per image) are counted
from the architecture the summary names (`csr_jax.accounting`), not measured. Each run's
summary.json, config.json, metrics.jsonl and run.json (exact command, machine, finish date) are
copied to `--results_dir/<run>/` so that the table can be rebuilt from git alone.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import importlib
import json
import os
import platform
import shlex
import shutil
import sys
from typing import Any, Sequence

from csr_jax import report

# Config files this command knows: the <config> part of a --runs entry -> module.
CONFIGS = {
    "resnet20": "experiments.configs.fashion_mnist_resnet20",
    "resnet56": "experiments.configs.fashion_mnist_resnet56",
    "mobilenetv2": "experiments.configs.fashion_mnist_mobilenetv2",
}
NUM_TRAIN = (
    60_000  # Fashion-MNIST's training split (the original IDX files; checked by the data tests).
)
NUM_TEST = 10_000
RUN_RECORD = "run.json"
# Files of a run kept as evidence (small ones only: no checkpoints, no TensorBoard events).
EVIDENCE_FILES = ("summary.json", "config.json", "metrics.jsonl", RUN_RECORD)
TARGET_POINTS = 0.5  # The claim checked: CSR within 0.5 accuracy points of ordinary ...
TARGET_REDUCTION = 40.0  # ... with at least 40% fewer parameters.

# Published test accuracies from the Fashion-MNIST README's benchmark section
# (https://github.com/zalandoresearch/fashion-mnist#benchmark), for context only: other
# recipes, augmentation and epochs than the rows above.
PUBLISHED = (
    ("WRN-28-10", "", "0.959"),
    ("DenseNet-BC", "768K", "0.954"),
    ("MobileNet", "", "0.950"),
    ("ResNet18", "", "0.949"),
    ("VGG16", "26M", "0.935"),
    ("2-conv CNNs (various)", "", "0.876-0.939"),
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "experiments", "RESULTS.md")
DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, "experiments", "results", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One `<config>:<csr>` entry of --runs."""

    config: str
    csr: str

    @property
    def name(self) -> str:
        return f"{self.config}_{self.csr}"


def parse_runs(text: str) -> list[RunSpec]:
    """`'resnet20:none,resnet20:t2'` -> RunSpecs; unknown configs raise with the valid names."""
    specs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        config, sep, csr = item.partition(":")
        if not sep or not csr:
            raise ValueError(
                f"--runs entry {item!r} is not <config>:<csr>, e.g. resnet20:t2 or resnet20:none."
            )
        if config not in CONFIGS:
            raise ValueError(
                f"--runs entry {item!r}: unknown config {config!r}; valid: {sorted(CONFIGS)}."
            )
        specs.append(RunSpec(config, csr))
    if not specs:
        raise ValueError("--runs is empty; give e.g. --runs resnet20:none,resnet20:t2.")
    return specs


def parse_override(text: str) -> tuple[str, Any]:
    """`'warmup_epochs=0.2'` -> ('warmup_epochs', 0.2); values are Python literals or strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r} is not key=value, e.g. --set image_size=28.")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


def build_config(spec: RunSpec, *, variant: str | None, overrides: Sequence[tuple[str, Any]]):
    """The config `python -m experiments.train --config <file>[:variant] --config.k=v ...` gives."""
    config = importlib.import_module(CONFIGS[spec.config]).get_config(variant)
    config.csr = spec.csr
    for key, value in overrides:
        if key not in config:
            raise ValueError(f"--set {key}=...: the config has no field {key!r}.")
        config[key] = value
    return config


def train_command(
    spec: RunSpec, workdir: str, *, variant: str | None, overrides: Sequence[tuple[str, Any]]
) -> str:
    """The `experiments.train` command line that trains exactly what `build_config` builds."""
    config_file = os.path.join("experiments", "configs", f"fashion_mnist_{spec.config}.py")
    if variant:
        config_file += f":{variant}"
    args = [
        "python",
        "-m",
        "experiments.train",
        "--config",
        config_file,
        "--workdir",
        workdir,
        f"--config.csr={spec.csr}",
    ]
    args += [f"--config.{k}={v}" for k, v in overrides]
    return shlex.join(args)


def machine_info() -> dict[str, Any]:
    """Where this process runs: CPU model and cores, JAX's device kind and count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import jax  # pylint: disable=g-import-not-at-top

    device = jax.devices()[0]
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": jax.device_count(),
    }


def machine_text(machine: dict[str, Any] | None) -> str:
    if not machine:
        return "not recorded"
    cpu = f"{machine.get('cpu_model', '?')}, {machine.get('cpu_cores', '?')} cores"
    if machine.get("platform") == "cpu":
        return f"CPU: {cpu}"
    return f"{machine.get('device_kind', '?')} x{machine.get('num_devices', '?')} (host {cpu})"


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def reconstruct_command(workdir: str) -> str | None:
    """An `experiments.train` command rebuilt from `<workdir>/config.json`: the config file of its
    model plus `--config.k=v` for every field that differs from that file's defaults."""
    saved = _read_json(os.path.join(workdir, "config.json"))
    if saved is None:
        return None
    for key, module in CONFIGS.items():
        base = importlib.import_module(module).get_config()
        if base.model != saved.get("model"):
            continue
        base_dict = json.loads(json.dumps(base.to_dict(), default=str))
        overrides = [
            (k, "none" if k == "csr" and v is None else v)
            for k, v in sorted(saved.items())
            if k in base_dict and base_dict[k] != v
        ]
        return train_command(
            RunSpec(key, str(saved.get("csr") or "none")),
            workdir,
            variant=None,
            overrides=[o for o in overrides if o[0] != "csr"],
        )
    return None


def run_record(workdir: str, summary: dict[str, Any]) -> dict[str, Any]:
    """`<workdir>/run.json` if the run has one; otherwise what can be established about it.

    Without a run.json (a run launched by hand): the command comes from `<workdir>/command.txt`
    (its first line that is not a `#` comment; the comment lines, e.g. "resumed from the step-117
    checkpoint", become the record's `history`), else it is rebuilt from config.json (and says
    so); the machine is this one only when the summary's device kind and count match it (a run
    made here), else 'not recorded'; the date is summary.json's modification time (when the run
    finished).
    """
    record = _read_json(os.path.join(workdir, RUN_RECORD))
    if record is not None:
        return record
    command_file = os.path.join(workdir, "command.txt")
    history: list[str] = []
    if os.path.isfile(command_file):
        with open(command_file, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        command = next((line for line in lines if not line.startswith("#")), "not recorded")
        history = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
    else:
        rebuilt = reconstruct_command(workdir)
        command = f"{rebuilt}  (rebuilt from config.json)" if rebuilt else "not recorded"
    here = machine_info()
    same = here["device_kind"] == summary.get("device_kind") and here["num_devices"] == summary.get(
        "num_devices"
    )
    mtime = os.path.getmtime(os.path.join(workdir, report.SUMMARY_FILE))
    finished = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
    record = {
        "command": command,
        "machine": here if same else None,
        "finished_utc": finished.strftime("%Y-%m-%d %H:%M UTC"),
    }
    if history:
        record["history"] = history
    return record


@dataclasses.dataclass
class Row:
    """One table row: the run's own numbers plus what is derived from them."""

    name: str
    workdir: str
    summary: dict[str, Any]
    record: dict[str, Any]
    macs: int | None = None
    reduction: float | None = None  # % fewer params than the ordinary row of the same model.
    seed: int = 0  # config.json's seed: repeated runs of one setting differ only in it.

    @property
    def epochs(self) -> float:
        return self.summary["step"] * self.summary["batch_size"] / NUM_TRAIN

    @property
    def image_size(self) -> int:
        return int(self.summary["image_shape"][0])

    @property
    def csr(self) -> str:
        return report.csr_name(self.summary.get("csr"))


def count_macs(summary: dict[str, Any]) -> int:
    """Conv + dense MACs per image of the network the summary describes."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from csr_jax import accounting, models  # pylint: disable=g-import-not-at-top

    net = models.create(
        summary["model"], num_classes=int(summary["num_classes"]), csr=summary.get("csr")
    )
    x = jnp.zeros((1,) + tuple(summary["image_shape"]), jnp.float32)
    return accounting.model_macs(net, x, method=lambda module, images: module(images, train=False))


def row_name(summary: dict[str, Any], seed: int = 0) -> str:
    """The evidence folder name: `<model>_<csr>_<epochs>ep_<size>px[_s<seed>]`, unique per run.

    Seed 0 (the configs' default) has no suffix, so the names of single-seed runs stay short.
    """
    epochs = summary["step"] * summary["batch_size"] / NUM_TRAIN
    name = (
        f"{summary['model']}_{report.csr_name(summary.get('csr')).replace(' ', '-')}_"
        f"{epochs:.3g}ep_{summary['image_shape'][0]}px"
    )
    return name if seed == 0 else f"{name}_s{seed}"


def run_seed(workdir: str) -> int:
    """The seed a run was trained with (its config.json; 0, the default, when absent)."""
    config = _read_json(os.path.join(workdir, "config.json")) or {}
    return int(config.get("seed", 0))


def setting(row: Row) -> tuple:
    """What two runs must share to be repeats of one experiment (everything but the seed)."""
    s = row.summary
    return (
        s["model"],
        s.get("csr") is not None,
        row.csr,
        row.image_size,
        s["step"],
        s["batch_size"],
    )


def load_rows(workdirs: Sequence[str]) -> list[Row]:
    """Reads every finished run under `workdirs` and derives MACs and reductions."""
    rows = []
    for path in [p for w in workdirs for p in report.find_runs(w)]:
        run = report.load_run(path)
        if run.summary.get("dataset") != "fashion_mnist":
            raise ValueError(f"{path} is a {run.summary.get('dataset')!r} run, not fashion_mnist.")
        seed = run_seed(path)
        rows.append(
            Row(
                row_name(run.summary, seed),
                path,
                run.summary,
                run_record(path, run.summary),
                seed=seed,
            )
        )
    names = [r.name for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"Several runs of the same setting and seed {dupes}; collect one of each "
            "(repeats of a setting need different --config.seed values)."
        )
    for row in rows:
        row.macs = count_macs(row.summary)
    for row in rows:
        ordinary = [
            o
            for o in rows
            if o.summary["model"] == row.summary["model"]
            and o.summary.get("csr") is None
            and o.image_size == row.image_size
        ]
        if ordinary:
            row.reduction = 100.0 * (
                1.0 - row.summary["num_params"] / ordinary[0].summary["num_params"]
            )
    rows.sort(
        key=lambda r: (
            r.summary["model"],
            r.image_size,
            r.summary.get("csr") is not None,
            r.csr,
            r.epochs,
            r.seed,
        )
    )
    return rows


def copy_evidence(row: Row, results_dir: str) -> str:
    """Copies the run's small files (and its run.json) to `<results_dir>/<row.name>/`."""
    dest = os.path.join(results_dir, row.name)
    os.makedirs(dest, exist_ok=True)
    same_dir = os.path.realpath(dest) == os.path.realpath(row.workdir)
    if not same_dir:
        for name in EVIDENCE_FILES[:-1]:
            src = os.path.join(row.workdir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(dest, name))
    record = dict(row.record)
    record.setdefault("source_workdir", row.workdir)
    with open(os.path.join(dest, RUN_RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return dest


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def reduction_text(row: Row) -> str:
    return "baseline" if row.summary.get("csr") is None else _pct(row.reduction)


def accuracy_text(summary: dict[str, Any]) -> str:
    """The accuracy, with the number of test images when the run did not use all 10,000."""
    text = f"{summary['eval_accuracy']:.4f}"
    if summary.get("eval_examples") != NUM_TEST:
        text += f" ({summary.get('eval_examples')} test images)"
    return text


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def groups(rows: Sequence[Row]) -> list[list[Row]]:
    """The rows grouped by setting (repeats over seeds together), in table order."""
    out: dict[tuple, list[Row]] = {}
    for row in rows:
        out.setdefault(setting(row), []).append(row)
    return list(out.values())


def _accuracies(runs: Sequence[Row]) -> list[float]:
    return [r.summary["eval_accuracy"] for r in runs]


def _seeds_text(runs: Sequence[Row]) -> str:
    if len(runs) == 1:
        return f"seed {runs[0].seed}"
    return f"mean of seeds {', '.join(str(r.seed) for r in runs)}"


def claim_lines(rows: Sequence[Row]) -> list[str]:
    """Per CSR setting with an ordinary partner at the same size and length: the target, met or
    not, on the mean accuracy over the seeds each side has."""
    lines = []
    settings = groups(rows)
    for runs in settings:
        row = runs[0]
        if row.summary.get("csr") is None:
            continue
        partners = [
            g
            for g in settings
            if g[0].summary["model"] == row.summary["model"]
            and g[0].summary.get("csr") is None
            and g[0].image_size == row.image_size
            and g[0].summary["step"] == row.summary["step"]
            and g[0].summary["batch_size"] == row.summary["batch_size"]
        ]
        if not partners:
            lines.append(
                f"- {row.summary['model']} CSR {row.csr}: no ordinary run with the same "
                "input size and length in this table; no comparison."
            )
            continue
        base = partners[0]
        delta = 100.0 * (_mean(_accuracies(runs)) - _mean(_accuracies(base)))
        met = delta >= -TARGET_POINTS and (row.reduction or 0.0) >= TARGET_REDUCTION
        lines.append(
            f"- {row.summary['model']} CSR {row.csr} ({_seeds_text(runs)}) vs ordinary "
            f"({_seeds_text(base)}), {row.epochs:.2f} epochs, "
            f"{row.image_size}x{row.image_size}: accuracy {delta:+.2f} points with "
            f"{_pct(row.reduction)} fewer params -> target (within {TARGET_POINTS} points, "
            f">= {TARGET_REDUCTION:.0f}% fewer): **{'met' if met else 'not met'}**."
        )
    return lines


def seed_noise_lines(rows: Sequence[Row]) -> list[str]:
    """Per setting trained with several seeds: each accuracy, the mean and the range."""
    lines = []
    for runs in groups(rows):
        if len(runs) < 2:
            continue
        accs = _accuracies(runs)
        row = runs[0]
        each = ", ".join(f"{a:.4f} (seed {r.seed})" for r, a in zip(runs, accs))
        lines.append(
            f"- {row.summary['model']} {row.csr} ({row.epochs:.2f} epochs, "
            f"{row.image_size}x{row.image_size}): {each}; mean {_mean(accs):.4f}, range "
            f"{100 * (max(accs) - min(accs)):.2f} points."
        )
    return lines


def gpu_commands(rows: Sequence[Row], epochs: float = 30.0) -> list[str]:
    """The full-recipe runs this table lacks, as commands for a GPU machine."""
    lines = []
    for key, module in CONFIGS.items():
        base = importlib.import_module(module).get_config()
        have = [r for r in rows if r.summary["model"] == base.model and r.epochs >= epochs - 0.01]
        if have:
            continue
        runs = f"{key}:none,{key}:{base.csr}"
        lines.append(
            f"- {base.model} (ordinary and CSR `{base.csr}`, {epochs:g} epochs): not run "
            f"yet. `python -m experiments.fashion_table --runs {runs} --epochs {epochs:g} "
            f"--workdir_root /tmp/fashion_{key}`"
        )
    return lines


PLOT_NAME = "accuracy_vs_params.png"
# A Markdown file in the results dir that the table is followed by, verbatim, on every rebuild.
NOTES_NAME = "NOTES.md"


def _published_params(text: str) -> float | None:
    """'768K' -> 768e3, '26M' -> 26e6, '' -> None."""
    if not text:
        return None
    scale = {"K": 1e3, "M": 1e6}[text[-1]]
    return float(text[:-1]) * scale


def plot_accuracy_vs_params(rows: Sequence[Row]):
    """Test accuracy against parameter count (log scale): the parameter-accuracy trade-off.

    One curve per model and training length through each preset's mean accuracy over seeds
    (the single runs of a repeated setting are open markers), so an ordinary network and its CSR
    versions read as a curve from right (more parameters) to left. The published benchmark rows
    with a known size are grey points, the others grey dashed lines: context from other recipes,
    not a like-for-like comparison. Draws on a bare ``Figure`` (no pyplot state).
    """
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    # One curve per model and training length (runs of different lengths are not a trade-off),
    # through the mean accuracy of each preset; every seed's own run is a small open marker.
    curves: dict[tuple, list[list[Row]]] = {}
    for runs in groups(rows):
        key = (runs[0].summary["model"], runs[0].image_size, round(runs[0].epochs, 2))
        curves.setdefault(key, []).append(runs)
    for i, ((model, size, epochs), settings) in enumerate(sorted(curves.items())):
        colour = f"C{i}"
        settings.sort(key=lambda runs: runs[0].summary["num_params"])
        xs = [runs[0].summary["num_params"] for runs in settings]
        ys = [_mean(_accuracies(runs)) for runs in settings]
        label = f"{model}, {epochs:g} epochs, {size}px"
        ax.plot(xs, ys, "-o", color=colour, label=label, gid=f"runs:{model}:{epochs:g}ep:{size}px")
        for runs, x, y in zip(settings, xs, ys):
            if len(runs) > 1:
                ax.plot(
                    [x] * len(runs),
                    _accuracies(runs),
                    "o",
                    mfc="none",
                    ms=4,
                    color=colour,
                    gid=f"seeds:{model}:{runs[0].csr}:{epochs:g}ep:{size}px",
                )
            seeds = "" if len(runs) == 1 else f", {len(runs)} seeds"
            ax.annotate(
                f"{runs[0].csr}{seeds}",
                (x, y),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
                color=colour,
            )
    for name, params, acc in PUBLISHED:
        size = _published_params(params)
        value = float(acc.split("-")[-1])
        if size is not None:
            ax.plot([size], [value], "s", color="0.55", gid=f"published:{name}")
            ax.annotate(
                f"{name} (published)",
                (size, value),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
                color="0.4",
            )
        else:
            ax.axhline(value, color="0.7", ls="--", lw=0.8, gid=f"published:{name}")
            ax.annotate(
                f"{name} (published)",
                (0.01, value),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(0, 2),
                fontsize=7,
                color="0.45",
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title("Fashion-MNIST: test accuracy vs parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def markdown(rows: Sequence[Row], results_dir: str, output: str) -> str:
    """The RESULTS.md text."""
    rel = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(output)))
    header = (
        "| model | CSR preset | params | reduction | MACs/image | test accuracy | epochs | "
        "seed | input | wall time | train images/s | machine | date | command |"
    )
    lines = [
        "# Fashion-MNIST: ordinary vs CSR networks",
        "",
        "Written by `python -m experiments.fashion_table`; every number below comes from the "
        "run's `summary.json` (copied, with its exact command, to "
        f"[`{rel}/`]({rel}/)). Test accuracy is on the full 10,000-image test set unless the cell "
        "says otherwise; params are the "
        "trained network's; reduction is relative to the ordinary run of the same model and input "
        "size; MACs are counted per image from the architecture; images/s is training throughput "
        "after compilation; wall time includes compilation and evaluation.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
    ]
    for r in rows:
        s = r.summary
        cmd = f"[{r.name}]({rel}/{r.name}/{RUN_RECORD})"
        cells = [
            s["model"],
            r.csr,
            f"{s['num_params']:,}",
            reduction_text(r),
            "n/a" if r.macs is None else f"{r.macs / 1e6:.1f}M",
            accuracy_text(s),
            f"{r.epochs:.2f}",
            str(r.seed),
            f"{r.image_size}x{r.image_size}",
            f"{s['wall_time_s'] / 60:.1f} min",
            "n/a" if s.get("images_per_sec") is None else f"{s['images_per_sec']:.1f}",
            machine_text(r.record.get("machine")),
            r.record.get("finished_utc", "not recorded"),
            cmd,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        f"![test accuracy vs parameters]({rel}/{PLOT_NAME})",
        "",
        f"The plot (`{rel}/{PLOT_NAME}`) shows the rows above against their parameter "
        "count, with the published benchmark below as grey context.",
    ]
    lines += [
        "",
        "## Target: CSR within 0.5 accuracy points of ordinary with >= 40% fewer params",
        "",
    ]
    lines += [
        "Each comparison is between networks trained with the same recipe and length; where a "
        "setting was trained with several seeds the comparison uses its mean accuracy. How far "
        "seeds alone move the accuracy is in the next section: a difference smaller than that "
        "range is noise, not an effect of the convolutions.",
        "",
    ]
    lines += claim_lines(rows) or ["- No CSR run in this table."]
    lines += ["", "## Seed noise", ""]
    lines += seed_noise_lines(rows) or [
        "- Every setting in this table has one run (one seed): its seed-to-seed spread is "
        "not measured here."
    ]
    lines += ["", "## Commands", ""]
    for r in rows:
        lines.append(f"- `{r.name}`: `{r.record.get('command', 'not recorded')}`")
        if r.record.get("launched_by"):
            lines.append(f"  (run by `{r.record['launched_by']}`)")
        for event in r.record.get("history", ()):
            lines.append(f"  - {event}")
    missing = gpu_commands(rows)
    if missing:
        lines += [
            "",
            "## Not run here (needs a GPU)",
            "",
            "The full 30-epoch recipe of these models takes hours per run on a few CPU cores; "
            "on one GPU it takes minutes. After `sudo apt-get install dataset-fashion-mnist`:",
            "",
        ]
        lines += missing
    lines += [
        "",
        "## Published Fashion-MNIST benchmark (for context)",
        "",
        "Test accuracy from the [Fashion-MNIST README benchmark]"
        "(https://github.com/zalandoresearch/fashion-mnist#benchmark) (other recipes, "
        "augmentation and training lengths than the rows above).",
        "",
        "| model | params | test accuracy |",
        "|---|---:|---:|",
    ]
    lines += [f"| {m} | {p or 'n/a'} | {a} |" for m, p, a in PUBLISHED]
    return "\n".join(lines) + "\n"


def train_runs(
    specs: Sequence[RunSpec],
    *,
    workdir_root: str,
    epochs: float | None,
    num_train_steps: int | None,
    variant: str | None,
    overrides: Sequence[tuple[str, Any]],
) -> list[str]:
    """Trains each spec in `<workdir_root>/<config>_<csr>` (resuming a finished or interrupted
    run there) and writes its run.json; returns the workdirs."""
    from csr_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top

    overrides = list(overrides)
    if epochs is not None:
        overrides.append(("num_epochs", float(epochs)))
    if num_train_steps is not None:
        overrides.append(("num_train_steps", int(num_train_steps)))
    launched_by = shlex.join(["python", "-m", "experiments.fashion_table"] + sys.argv[1:])
    workdirs = []
    for spec in specs:
        workdir = os.path.join(workdir_root, spec.name)
        config = build_config(spec, variant=variant, overrides=overrides)
        command = train_command(spec, workdir, variant=variant, overrides=overrides)
        print(f"== {spec.name}: {command}", flush=True)
        summary = train_and_evaluate(config, workdir)
        if summary.get("preempted"):
            raise RuntimeError(f"{spec.name} was preempted: {summary['message']}")
        record = {
            "command": command,
            "launched_by": launched_by,
            "machine": machine_info(),
            "finished_utc": _utc_now(),
        }
        with open(os.path.join(workdir, RUN_RECORD), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        workdirs.append(workdir)
    return workdirs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.fashion_table",
        description="Train Fashion-MNIST configs (or collect finished runs) and write the results "
        "table with the published benchmark.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--runs",
        help="runs to train, e.g. resnet20:none,resnet20:t2 "
        f"(configs: {', '.join(CONFIGS)}; csr: a preset of the model or none)",
    )
    what.add_argument(
        "--collect",
        nargs="+",
        metavar="DIR",
        help="finished run workdirs (or directories of them) to tabulate",
    )
    parser.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="training epochs of every run (default: the config's, 30)",
    )
    parser.add_argument(
        "--num_train_steps",
        type=int,
        default=None,
        help="train this many steps instead (smoke runs)",
    )
    parser.add_argument(
        "--variant",
        default=None,
        choices=["runlocal"],
        help="config variant: runlocal is a few-step smoke run",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of every run, e.g. --set image_size=28",
    )
    parser.add_argument(
        "--workdir_root",
        default="/tmp/fashion_mnist_runs",
        help="where --runs trains (one subdirectory per run)",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the Markdown table to write")
    parser.add_argument(
        "--results_dir",
        default=DEFAULT_RESULTS_DIR,
        help="where each run's summary.json, config, metrics and command are copied",
    )
    args = parser.parse_args(argv)
    if args.collect and (
        args.epochs is not None or args.num_train_steps is not None or args.variant or args.set
    ):
        parser.error("--epochs/--num_train_steps/--variant/--set apply to --runs, not --collect.")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (user errors are printed, not raised)."""
    args = parse_args(argv)
    from csr_jax.data import DatasetNotFoundError  # pylint: disable=g-import-not-at-top

    try:
        if args.runs:
            workdirs = train_runs(
                parse_runs(args.runs),
                workdir_root=args.workdir_root,
                epochs=args.epochs,
                num_train_steps=args.num_train_steps,
                variant=args.variant,
                overrides=[parse_override(s) for s in args.set],
            )
        else:
            workdirs = args.collect
        rows = load_rows(workdirs)
        for row in rows:
            copy_evidence(row, args.results_dir)
        text = markdown(rows, args.results_dir, args.output)
        notes = os.path.join(args.results_dir, NOTES_NAME)
        if os.path.isfile(notes):  # Hand-written context (the recipe's why) survives a rebuild.
            with open(notes, encoding="utf-8") as f:
                text += "\n" + f.read().strip() + "\n"
        os.makedirs(args.results_dir, exist_ok=True)
        plot_accuracy_vs_params(rows).savefig(os.path.join(args.results_dir, PLOT_NAME), dpi=110)
    except (OSError, ValueError, DatasetNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"table: {os.path.abspath(args.output)}")
    print(f"evidence: {os.path.abspath(args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
