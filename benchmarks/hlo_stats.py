"""What one CSR-Conv layer's forward+backward compiles to: op counts of the optimised HLO.

The profile behind the layer's design (``benchmarks/RESULTS.md``): a rolled scan shows up as
``while`` loops with ``dynamic-slice`` / ``dynamic-update-slice`` per step; re-interleaving the
output and folding T into the batch show up as ``transpose`` / ``copy``; per-step slices of the
input-path output show up, in the gradient, as ``pad`` of full-size zeros. Every kernel of the
program (entry computation and loop bodies) counts once, a fusion under what its root computes;
``kernels`` is their total.

Run:  python -m benchmarks.hlo_stats [--batch 8] [--spatial 16] [--baseline-layer FILE]
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from benchmarks.layer_bench import CASES, _fwd_bwd, select
from benchmarks.model_bench import _load_layer_class
from csr_jax import CSRConv

OPS = (
    "while",
    "dynamic-slice",
    "dynamic-update-slice",
    "transpose",
    "copy",
    "pad",
    "concatenate",
    "convolution",
    "dot",
)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = .*?\s([a-z][a-z\-]*)\((.*)$")
_SHAPELESS = ("bitcast", "tuple", "get-tuple-element", "reshape")


def _computations(hlo_text: str) -> dict[str, dict]:
    """Per computation: its instructions (name -> opcode, operand text) and its root."""
    out: dict[str, dict] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = out.setdefault(header.group(1), {"ops": {}, "order": [], "root": None})
            continue
        if line.startswith("}"):
            current = None
            continue
        inst = _INSTRUCTION.match(line) if current is not None else None
        if inst:
            root, name, opcode, rest = inst.groups()
            current["ops"][name] = (opcode, rest)
            current["order"].append(name)
            if root:
                current["root"] = name
    return out


def _root_op(computation: dict) -> str:
    """What a fused computation produces: its root's opcode, looking through bitcasts/tuples."""
    name = computation["root"]
    for _ in range(8):
        opcode, rest = computation["ops"].get(name, ("?", ""))
        if opcode not in _SHAPELESS:
            return opcode
        operand = re.search(r"%([\w.\-]+)", rest)
        if operand is None:
            return opcode
        name = operand.group(1)
    return "?"


def op_counts(hlo_text: str) -> collections.Counter:
    """Kernels of the program by what they compute.

    Every instruction of the program's own computations (entry, loop bodies) counts once: a
    plain op under its opcode, a fusion under its root's opcode (a fusion whose root is a
    transpose is a transpose kernel, one rooted in a dot is a matmul). ``kernels`` counts them
    all, bitcasts, tuples, parameters and constants excluded.
    """
    computations = _computations(hlo_text)
    inner = set()
    for line in hlo_text.splitlines():
        if " fusion(" in line or "to_apply=" in line:
            inner.update(_CALLS.findall(line))
    counts: collections.Counter = collections.Counter()
    for name, computation in computations.items():
        if name in inner:
            continue
        for inst in computation["order"]:
            opcode, rest = computation["ops"][inst]
            if opcode in (*_SHAPELESS, "parameter", "constant"):
                continue
            if opcode == "fusion":
                called = _CALLS.search(rest)
                opcode = (
                    _root_op(computations[called.group(1)])
                    if called and called.group(1) in computations
                    else "?"
                )
            counts[opcode] += 1
            counts["kernels"] += 1
    return counts


def layer_stats(module: nn.Module, variables, x) -> dict:
    compiled = _fwd_bwd(module).lower(variables, x).compile()
    counts = op_counts(compiled.as_text())
    memory = compiled.memory_analysis()
    return {
        "ops": {op: counts.get(op, 0) for op in (*OPS, "kernels")},
        "temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--spatial", type=int, default=16)
    parser.add_argument(
        "--baseline-layer", default=None, help="an earlier csr_conv.py to compare against"
    )
    args = parser.parse_args(argv)
    baseline = _load_layer_class(args.baseline_layer) if args.baseline_layer else None
    cases = select(CASES, None, args.spatial) + [
        ("mbv2 depthwise 3x3 192 T=3", 192, 192, 3, 3, args.spatial)
    ]
    print(
        f"# hlo_stats  jax {jax.__version__}  device {jax.devices()[0].device_kind}  batch {args.batch}  "
        f"{args.spatial}x{args.spatial}; op counts outside fusions of the fwd+bwd program"
    )
    print("| case | variant | " + " | ".join(OPS) + " | kernels | temp MiB |")
    print("|---|---|" + "---|" * (len(OPS) + 2))
    for name, c_in, c_out, k, steps, hw in cases:
        depthwise = "depthwise" in name
        x = jax.random.normal(jax.random.key(1), (args.batch, hw, hw, c_in), jnp.float32)
        variables = CSRConv(c_out, k, steps, depthwise=depthwise).init(jax.random.key(0), x)
        variants = {
            "csr (unroll=None)": CSRConv(c_out, k, steps, depthwise=depthwise),
            "csr unroll=1": CSRConv(c_out, k, steps, depthwise=depthwise, unroll=1),
        }
        if baseline is not None:
            variants["baseline"] = baseline(c_out, k, steps, depthwise=depthwise)
        conv = nn.Conv(c_out, (k, k), use_bias=False, feature_group_count=c_in if depthwise else 1)
        variants["nn.Conv (reference)"] = conv
        for label, module in variants.items():
            stats = layer_stats(
                module, conv.init(jax.random.key(0), x) if module is conv else variables, x
            )
            temp = stats["temp_bytes"]
            print(
                f"| {name} | {label} | "
                + " | ".join(str(stats["ops"][op]) for op in (*OPS, "kernels"))
                + f" | {'-' if temp is None else f'{temp / 2**20:.1f}'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
