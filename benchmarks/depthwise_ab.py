"""Whole-network A/B of the depthwise path: csr_jax's depthwise module at an earlier git revision
against the working tree's, in ONE process, timed alternately.

Why: a change to ``csr_jax/depthwise.py`` moves the train step of every network with depthwise
convs, and CPU timings drift by 10% between runs minutes apart; only an interleaved comparison
(before, after, before, after, ...) on the same compiled-step harness as ``model_bench`` gives a
ratio worth recording. The earlier revision's ``_taps`` (read with ``git show``) is swapped in
while the "before" step is traced; everything else is the working tree's.

Run:  python -m benchmarks.depthwise_ab --before e5bace2 [--cases mbv2c effb0 mbv2-b] [--variants ordinary csr]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import jax

from benchmarks import model_bench
from csr_jax import depthwise


def load_module_at(rev: str, path: str = "csr_jax/depthwise.py"):
    """The module ``path`` as it was at git revision ``rev``, imported under a private name."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True, cwd=repo
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"_depthwise_at_{rev}", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' code")
    parser.add_argument("--cases", nargs="*", default=["mbv2c", "effb0", "mbv2-b"])
    parser.add_argument("--variants", nargs="*", default=["ordinary", "csr"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="chained steps per timing")
    args = parser.parse_args(argv)

    old = load_module_at(args.before)
    after_taps = depthwise._taps

    def before_taps(x, kernel, strides, pads):
        return old._taps(x, kernel, strides, [tuple(p) for p in pads])

    print(
        f"# depthwise_ab  before {args.before}  jax {jax.__version__}  host {platform.node()}  "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    print(
        "| case | variant | before img/s | after img/s | after / before | planned MiB before -> after |"
    )
    print("|---|---|---|---|---|---|")
    for case in model_bench.select_cases("cpu-dw", args.cases):
        for variant in args.variants:
            built = {}
            for name, taps in (("before", before_taps), ("after", after_taps)):
                depthwise._taps = taps
                try:
                    built[name] = model_bench.build(case, variant)
                finally:
                    depthwise._taps = after_taps
                built[name].run(args.steps)  # warm-up
            times: dict[str, list[float]] = {name: [] for name in built}
            for _ in range(args.repeats):
                for name, b in built.items():
                    times[name].append(b.run(args.steps) / args.steps)
            med = {name: statistics.median(t) for name, t in times.items()}
            mib = {name: b.memory.get("planned_bytes", 0) >> 20 for name, b in built.items()}
            print(
                f"| {case.id} | {variant} | {case.batch / med['before']:.1f} | "
                f"{case.batch / med['after']:.1f} | {med['before'] / med['after']:.2f} | "
                f"{mib['before']:,} -> {mib['after']:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
