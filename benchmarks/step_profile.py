"""Where a compiled train step spends its time on CPU: kernel time per fusion kind and op, and
how many kernels run at once.

Why: ``model_bench`` says how fast a step is, not why. This traces a few steps of the same
compiled step with ``jax.profiler`` (a Perfetto trace; no TensorBoard needed), matches the
kernel events of XLA:CPU's thunk executor to the instructions of the optimised HLO, and sums
them by fusion kind (``ynn_fusion``, ``pad_slice_fusion``, ...) and by the JAX op that made them
(the HLO ``op_name``, block numbers folded, e.g. ``jvp(MobileNetV2)/block_N/expand/dot_general``).
The concurrency profile (share of the step with 0, 1, 2, ... kernels running at once) counts
kernel events on the thread that launched them; it does NOT show how many cores a kernel uses:
YNNPACK spreads a dot or reduction over the thread pool without trace events (section 10 of
``benchmarks/RESULTS.md``: a step with "1 kernel running" 65% of the time ran 1.9x faster on
2 cores than on 1). For per-op costs without that ambiguity, pin the process to one core
(``taskset -c 0``): kernel times then add up to the step. ``benchmarks/RESULTS.md`` section 9 is
the profile that found the depthwise kernel-gradient cost.

Run:  python -m benchmarks.step_profile --preset cpu-dw --case mbv2c [--variant csr] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax

from benchmarks import model_bench

# The result type is one array type or a tuple of them (``(f32[..]{..}, f32[..]{..})``: a custom
# call with several results, e.g. the native BatchNorm's).
_INSTRUCTION = re.compile(
    r"%([\w.\-]+) = (?:\([^()]*\)|\S+) (?:fusion|[a-z\-]+)\(.*?op_name=\"([^\"]+)\""
)


def op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its JAX op name (``jit(step)/`` dropped, block indices folded)."""
    out = {}
    for m in _INSTRUCTION.finditer(hlo_text):
        op = re.sub(r"block_\d+", "block_N", m.group(2))
        out[m.group(1)] = re.sub(r"^jit\([^)]*\)/", "", op)
    return out


def kind_of(name: str) -> str:
    """``pad_slice_fusion.12`` -> ``pad_slice_fusion``."""
    return re.sub(r"\.\d+$", "", name)


def summarise(events: list[dict], names: dict[str, str], steps: int) -> dict[str, Any]:
    """Kernel ms per step by fusion kind and by (kind, op), and the thread-occupancy shares."""
    kernels = [e for e in events if e.get("ph") == "X" and e.get("name") in names]
    by_kind: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in kernels:
        ms = e["dur"] / 1e3 / steps
        by_kind[kind_of(e["name"])] += ms
        key = (kind_of(e["name"]), names[e["name"]])
        by_op[key] += ms
        count[key] += 1
    # Occupancy: sweep over kernel start/end events of all threads.
    edges = sorted([(e["ts"], 1) for e in kernels] + [(e["ts"] + e["dur"], -1) for e in kernels])
    occupancy: collections.Counter = collections.Counter()
    busy = 0
    for (t, delta), (t_next, _) in zip(edges, edges[1:] + edges[-1:]):
        busy += delta
        occupancy[busy] += t_next - t
    span = sum(occupancy.values()) or 1.0
    return {
        "kernel_ms_per_step": sum(by_kind.values()),
        "span_ms_per_step": span / 1e3 / steps,
        "by_kind": by_kind,
        "by_op": by_op,
        "count_per_step": {k: v / steps for k, v in count.items()},
        "kernels_running_share": {k: v / span for k, v in sorted(occupancy.items())},
    }


def profile(case: model_bench.Case, variant: str, steps: int = 2) -> dict[str, Any]:
    """Builds and warms up the case's step, traces ``steps`` steps, returns :func:`summarise`."""
    built = model_bench.build(case, variant)
    built.run(2)
    names = op_names(built.compiled.as_text())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            built.run(steps)
        (path,) = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    out = summarise(events, names, steps)
    out["images_per_s_traced"] = case.batch / (out["span_ms_per_step"] / 1e3)
    return out


def format_report(case_id: str, variant: str, s: dict[str, Any], top: int) -> str:
    lines = [
        f"# {case_id} {variant}: kernel time {s['kernel_ms_per_step']:.0f} ms/step over a "
        f"{s['span_ms_per_step']:.0f} ms step; kernels running at once (not cores used): "
        + ", ".join(f"{k}: {v:.0%}" for k, v in s["kernels_running_share"].items()),
        "",
        "| fusion kind | ms/step |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in s["by_kind"].most_common(top)]
    lines += ["", "| fusion kind | op | kernels/step | ms/step |", "|---|---|---|---|"]
    lines += [
        f"| {kind} | {op} | {s['count_per_step'][(kind, op)]:.0f} | {v:.1f} |"
        for (kind, op), v in s["by_op"].most_common(top)
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(model_bench.PRESETS), default="cpu-dw")
    parser.add_argument("--case", default="mbv2c", help="a case id (or part of one) of the preset")
    parser.add_argument("--variant", choices=model_bench.VARIANTS, default="ordinary")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    (case,) = model_bench.select_cases(args.preset, [args.case])[:1]
    print(format_report(case.id, args.variant, profile(case, args.variant, args.steps), args.top))


if __name__ == "__main__":
    main(sys.argv[1:])
