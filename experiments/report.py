r"""Compare training runs: `python -m experiments.report --workdir DIR [--workdir DIR2 ...] [--out OUT]`.

Reads each run's summary.json and metrics.jsonl (as written by `python -m experiments.train`)
and writes two files to OUT (default: the first --workdir):

* report.png — loss and accuracy against step, all runs in one figure;
* report.md  — a table: model, csr, dataset, params, eval accuracy, eval loss, steps, images/s,
  wall time.

A --workdir may also be a directory whose subdirectories are runs (a sweep), e.g.

  python -m experiments.train --workdir runs/csr
  python -m experiments.train --workdir runs/plain --config.csr=none
  python -m experiments.report --workdir runs --out runs
"""

from __future__ import annotations

import argparse
import os
import sys

from csr_jax import report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Learning curves (PNG) and a summary table (Markdown) of finished training runs.",
    )
    parser.add_argument(
        "--workdir",
        action="append",
        required=True,
        metavar="DIR",
        help="a run's workdir, or a directory of run workdirs; repeat for several",
    )
    parser.add_argument(
        "--out",
        metavar="OUT_DIR",
        default=None,
        help="where report.png and report.md go (default: the first --workdir)",
    )
    parser.add_argument(
        "--name", default="report", help="file name stem of the outputs (default: report)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (errors are printed, not raised)."""
    args = parse_args(argv)
    try:
        runs = report.load_runs(args.workdir)
        png, md = report.write_report(runs, args.out or args.workdir[0], name=args.name)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.markdown_table(runs))
    print(f"curves: {os.path.abspath(png)}")
    print(f"table:  {os.path.abspath(md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
