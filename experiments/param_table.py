"""Parameters and MACs of every backbone, ordinary and with each CSR preset.

    python -m experiments.param_table                      # print, write experiments/results/param_table.{md,csv}
    python -m experiments.param_table --readme README.md   # also refresh the README's table
    python -m experiments.param_table --models resnet56,mobilenetv2_cifar --verify

Nothing is computed on data: networks are initialised abstractly with ``jax.eval_shape``. The
ordinary network is counted directly (``params`` collection: BatchNorm scale and bias in, running
statistics out) and its convs are listed with ``accounting.layer_report``; each preset's policy
then decides every conv, and the CSR network's parameters and MACs are the ordinary ones with
each replaced conv's count swapped for ``accounting.csr_conv_params`` / ``csr_conv_macs``.
``--verify`` also builds every CSR network (abstractly) and checks its real parameter count
against that sum; it is off by default because tracing the CSR layers' scans makes the full
table take a minute instead of seconds (tests/test_models.py checks the same identity for
every model). MACs are per image at the model's default input size, for convs and dense layers.
They show what the paper's method trades: CSR removes parameters, not computation; a CSR network
may even do more MACs than the ordinary one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import os
import re
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from csr_jax import accounting, models

START_MARKER = "<!-- PARAM_TABLE_START -->"
END_MARKER = "<!-- PARAM_TABLE_END -->"
DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STEPS = (1, 2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table."""

    model: str
    preset: str
    steps: str  # T of the CSR layers, e.g. '4' or '3, 4'; '1' for the ordinary network
    csr_layers: int
    conv_layers: int
    ordinary_params: int
    csr_params: int
    ordinary_macs: int
    csr_macs: int

    @property
    def reduction(self) -> float:
        """Percent of the ordinary parameters that CSR removes."""
        return 100.0 * (1.0 - self.csr_params / self.ordinary_params)

    @property
    def macs_change(self) -> float:
        """Percent change of MACs (positive: CSR computes more)."""
        return 100.0 * (self.csr_macs / self.ordinary_macs - 1.0)


def _num_classes(name: str) -> int:
    return 10 if models.default_input_shape(name)[0] == 32 else 1000


def _eval_call(module, x):
    # layer_report traces its keyword arguments; `train` has to stay a Python bool.
    return module(x, train=False)


def _params(model, x) -> int:
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return accounting.count_params(
        jax.eval_shape(functools.partial(model.init, train=False), keys, x)
    )


def model_rows(name: str, steps: Sequence[int] = STEPS, verify: bool = False) -> list[Row]:
    """Rows of one model: each ``t{N}`` preset for N in ``steps`` (t1 is the ordinary network),
    then the ``reference`` preset where the model has one. ``verify`` builds each CSR network and
    checks its parameter count."""
    classes = _num_classes(name)
    x = jax.ShapeDtypeStruct((1, *models.default_input_shape(name)), jnp.float32)
    ordinary = models.create(name, num_classes=classes)
    ordinary_params = _params(ordinary, x)
    report = {r.path: r for r in accounting.layer_report(ordinary, x, method=_eval_call)}
    ordinary_macs = sum(r.macs for r in report.values())
    sites = [site for site, _ in models.conv_plan(ordinary, models.default_input_shape(name))]

    presets = [f"t{t}" for t in steps]
    presets += [p for p in models.list_presets(name) if not p.startswith("t")]
    rows = []
    for preset in presets:
        policy = models.get_policy(name, preset)
        replaced = [(s, policy.decide(s).steps) for s in sites]
        replaced = [(s, t) for s, t in replaced if t > 1]
        predicted, macs = ordinary_params, ordinary_macs
        for site, t in replaced:
            r = report[site.path]
            predicted += (
                accounting.csr_conv_params(
                    site.in_channels,
                    site.out_channels,
                    site.kernel_size,
                    t,
                    use_bias=site.use_bias,
                    depthwise=site.depthwise,
                )
                - r.params
            )
            macs += (
                accounting.csr_conv_macs(
                    site.in_channels,
                    site.out_channels,
                    site.kernel_size,
                    t,
                    r.out_hw,
                    depthwise=site.depthwise,
                )
                - r.macs
            )
        model = models.create(name, num_classes=classes, csr=preset)  # also checks the policy fits
        if verify and replaced:
            built = _params(model, x)
            if built != predicted:
                raise RuntimeError(
                    f"{name} {preset}: the built CSR network has {built:,} parameters, the closed "
                    f"form predicts {predicted:,}; accounting and layers disagree."
                )
        used = sorted({t for _, t in replaced}) or [1]
        rows.append(
            Row(
                name,
                preset,
                ", ".join(map(str, used)),
                len(replaced),
                len(sites),
                ordinary_params,
                predicted,
                ordinary_macs,
                macs,
            )
        )
    return rows


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f}M"


def table_order(names: Sequence[str]) -> list[str]:
    """CIFAR nets first, then ImageNet nets; within each, by family and depth (resnet20 before resnet110)."""

    def key(name: str):
        base, depth = re.match(r"(\D*)(\d*)", name).groups()
        return (models.default_input_shape(name)[0], base, int(depth) if depth else 0, name)

    return sorted(names, key=key)


def to_markdown(rows: Sequence[Row]) -> str:
    """The table plus why each preset picks its layers."""
    lines = [
        "| model | preset | T | CSR convs | ordinary params | CSR params | params saved "
        "| ordinary MACs | CSR MACs | MACs change |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.preset} | {r.steps} | {r.csr_layers}/{r.conv_layers} | {r.ordinary_params:,} | "
            f"{r.csr_params:,} | {r.reduction:.1f}% | {_millions(r.ordinary_macs)} | {_millions(r.csr_macs)} | "
            f"{r.macs_change:+.1f}% |"
        )
    lines += [
        "",
        "Parameters: the `params` collection (BatchNorm scale and bias included, running statistics not). "
        "MACs: multiply-accumulates of all convs and dense layers per image at the model's default input "
        "(32x32 for CIFAR nets, 224x224 for ImageNet nets). `t1` is the ordinary network. "
        "CSR shrinks parameters by up to ~1/T^2 on the layers it replaces, but not the compute: "
        "the hidden recurrence adds MACs, so a CSR net can cost more MACs than the ordinary one.",
        "",
        "Why the presets pick these layers:",
        "",
    ]
    reasons: dict[tuple[str, str], list[str]] = {}
    for name in dict.fromkeys(r.model for r in rows):
        for preset, reason in models.describe_presets(name).items():
            reasons.setdefault((preset, reason), []).append(name)
    for (preset, reason), names in reasons.items():
        lines.append(f"- **{preset}** ({', '.join(names)}): {reason}")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "model",
            "preset",
            "T",
            "csr_convs",
            "convs",
            "ordinary_params",
            "csr_params",
            "params_reduction_pct",
            "ordinary_macs",
            "csr_macs",
            "macs_change_pct",
        ]
    )
    for r in rows:
        writer.writerow(
            [
                r.model,
                r.preset,
                r.steps,
                r.csr_layers,
                r.conv_layers,
                r.ordinary_params,
                r.csr_params,
                f"{r.reduction:.2f}",
                r.ordinary_macs,
                r.csr_macs,
                f"{r.macs_change:.2f}",
            ]
        )
    return out.getvalue()


def replace_block(text: str, block: str) -> str:
    """Put ``block`` between the marker lines of ``text`` (everything between them is replaced)."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == START_MARKER]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(
            f"Expected exactly one line {START_MARKER!r} followed by one line {END_MARKER!r}; found "
            f"{len(starts)} start and {len(ends)} end marker(s). Add the two marker lines where the table goes."
        )
    body = block if block.endswith("\n") else block + "\n"
    return "".join(lines[: starts[0] + 1]) + "\n" + body + "\n" + "".join(lines[ends[0] :])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.param_table", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated subset of: {', '.join(models.list_models())} (default: all)",
    )
    parser.add_argument(
        "--out-dir", default=DEFAULT_OUT_DIR, help="where param_table.md and .csv go"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also build every CSR network and check its parameter count (about a minute)",
    )
    parser.add_argument(
        "--readme",
        default=None,
        help=f"a Markdown file whose block between {START_MARKER} and {END_MARKER} is replaced",
    )
    args = parser.parse_args(argv)

    names = (
        table_order(models.list_models())
        if args.models is None
        else [n.strip() for n in args.models.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in models.list_models()]
    if unknown or not names:
        parser.error(f"unknown model(s) {unknown}; valid: {', '.join(models.list_models())}")
    readme_text = None
    if args.readme is not None:
        with open(args.readme, encoding="utf-8") as f:
            readme_text = f.read()
        try:
            replace_block(readme_text, "")  # fail before the work, not after
        except ValueError as e:
            parser.error(f"{args.readme}: {e}")

    start = time.time()
    rows = [row for name in names for row in model_rows(name, verify=args.verify)]
    markdown = to_markdown(rows)
    print(markdown)
    os.makedirs(args.out_dir, exist_ok=True)
    for ext, content in (("md", markdown), ("csv", to_csv(rows))):
        with open(os.path.join(args.out_dir, f"param_table.{ext}"), "w", encoding="utf-8") as f:
            f.write(content)
    if readme_text is not None:
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(replace_block(readme_text, markdown))
    print(
        f"Wrote {args.out_dir}/param_table.{{md,csv}}"
        + (f" and the table in {args.readme}" if readme_text is not None else "")
        + f" ({len(rows)} rows, {time.time() - start:.0f} s).",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
