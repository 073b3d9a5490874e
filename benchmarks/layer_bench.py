"""Forward+backward time of one CSR-Conv layer: as built, rolled scan, naive step-by-step, ``nn.Conv``.

Why these variants: ``nn.Conv`` with the same channels is what CSR-Conv replaces; the naive
version runs both convolutions step by step like the authors' reference code, which our batched
input path + unrolled hidden path must beat; ``CSRConv(unroll=1)`` is the same layer with its
hidden steps in a rolled ``nn.scan`` loop, to show what unrolling buys. Above
``FULL_UNROLL_MAX_STEPS`` the layer's default is that rolled loop itself, so such cases (``--steps``)
also time ``unrolled`` (``unroll=T-1``, straight-line code), with its compile time. The MAC ratio
CSR/conv (from ``csr_jax.accounting``) says how much slower CSR may fairly be.

All variants are compiled first and then timed interleaved (A B C D A B C D ...), so a shared
machine's changing load hits them alike; each time is the median over ``--repeats``.

Run:  python -m benchmarks.layer_bench            (batch 128; takes long on a 2-core CPU)
      python -m benchmarks.layer_bench --batch 16 --repeats 5 --json out.jsonl
      python -m benchmarks.layer_bench --cases resnet56 --spatial 8
      python -m benchmarks.layer_bench --cases resnet56 --spatial 8 --steps 16   (T above the unroll limit)
It runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchmarks.model_bench import _load_layer_class
from csr_jax import CSRConv, accounting
from csr_jax.csr_conv import FULL_UNROLL_MAX_STEPS, csr_group_sizes

# (name, c_in, c_out, k, T, spatial): MobileNetV2 expand/project 1x1 and a ResNet-56 3x3 conv.
CASES = [
    ("mbv2 expand 1x1 96->576 T=3", 96, 576, 1, 3, 32),
    ("mbv2 project 1x1 576->96 T=4", 576, 96, 1, 4, 32),
    ("mbv2 expand 1x1 96->576 T=3", 96, 576, 1, 3, 8),
    ("mbv2 project 1x1 576->96 T=4", 576, 96, 1, 4, 8),
    ("resnet56 3x3 64->64 T=4", 64, 64, 3, 4, 32),
    ("resnet56 3x3 64->64 T=4", 64, 64, 3, 4, 8),
]


class NaiveCSRConv(nn.Module):
    """The reference's structure: a Python loop over T running U and V conv by conv.

    Same parameter tree as ``CSRConv`` (``input_kernel``, ``hidden/{hidden_kernel,alpha,beta}``),
    so the two can be applied to the same variables and compared.
    """

    features: int
    kernel_size: int
    steps: int

    @nn.compact
    def __call__(self, x):
        k, T = self.kernel_size, self.steps
        c_in = x.shape[-1]
        g_in, g_out = csr_group_sizes(c_in, self.features, T)
        U = self.param("input_kernel", nn.initializers.lecun_normal(), (k, k, g_in, g_out))
        hidden = _NaiveHiddenParams(g_out, k, name="hidden")
        V, alpha, beta = hidden()
        if T * g_in > c_in:
            x = jnp.concatenate([x] * -(-T * g_in // c_in), axis=-1)[..., : T * g_in]
        pad = [((k - 1) // 2,) * 2] * 2
        conv = lambda v, w: jax.lax.conv_general_dilated(
            v, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        hs = []
        h = None
        for t in range(T):
            a = conv(x[..., t * g_in : (t + 1) * g_in], U)
            if t == 0:
                h = a
            else:
                r = conv(h, V)
                h = alpha * jax.nn.relu(a + r) - beta * r + r
            hs.append(h)
        return jnp.concatenate(hs, axis=-1)[..., : self.features]


class _NaiveHiddenParams(nn.Module):
    features: int
    kernel_size: int

    @nn.compact
    def __call__(self):
        k, g = self.kernel_size, self.features
        return (
            self.param("hidden_kernel", nn.initializers.lecun_normal(), (k, k, g, g)),
            self.param("alpha", nn.initializers.constant(0.5), ()),
            self.param("beta", nn.initializers.constant(0.5), ()),
        )


def _fwd_bwd(module: nn.Module) -> Callable:
    @jax.jit
    def step(variables, x):
        def loss(v, x):
            y = module.apply(v, x)
            return jnp.mean(y * y), y

        (value, y), grads = jax.value_and_grad(loss, has_aux=True, argnums=(0, 1))(variables, x)
        return value, grads, y

    return step


def time_interleaved(
    fns: dict[str, tuple[Callable, tuple]], repeats: int, inner: int = 1
) -> tuple[dict[str, float], dict[str, float]]:
    """Compiles (first call) each ``fn(*args)``, then times them A B C A B C ...

    Each timed repeat makes ``inner`` calls and waits for the last, so that on a GPU the
    per-call dispatch latency overlaps with the device work. Returns median ms per call, and
    the compile (first call) seconds.
    """
    compile_s = {}
    for name, (fn, args) in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, args) in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / inner)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}, compile_s


def run_case(
    name: str,
    c_in: int,
    c_out: int,
    k: int,
    T: int,
    hw: int,
    batch: int,
    repeats: int,
    baseline: type | None = None,
) -> dict:
    """Times the variants of one layer; checks that naive and CSRConv compute the same.

    ``baseline`` is an earlier ``CSRConv`` class (``--baseline-layer``), timed as one more variant.
    """
    x = jax.random.normal(jax.random.key(1), (batch, hw, hw, c_in), jnp.float32)
    csr = CSRConv(c_out, k, T, padding="SAME")
    variables = csr.init(jax.random.key(0), x)
    conv = nn.Conv(c_out, (k, k), padding="SAME", use_bias=False)
    conv_vars = conv.init(jax.random.key(0), x)
    fns = {
        "csr": (_fwd_bwd(csr), (variables, x)),
        "scan": (_fwd_bwd(CSRConv(c_out, k, T, padding="SAME", unroll=1)), (variables, x)),
        "naive": (_fwd_bwd(NaiveCSRConv(c_out, k, T)), (variables, x)),
        "conv": (_fwd_bwd(conv), (conv_vars, x)),
    }
    if T > FULL_UNROLL_MAX_STEPS:  # the default is rolled here: time the straight-line form too
        fns["unrolled"] = (
            _fwd_bwd(CSRConv(c_out, k, T, padding="SAME", unroll=T - 1)),
            (variables, x),
        )
    if baseline is not None:
        fns["baseline"] = (_fwd_bwd(baseline(c_out, k, T, padding="SAME")), (variables, x))
    inner = 1 if jax.devices()[0].platform == "cpu" else 10
    ms, compile_s = time_interleaved(fns, repeats, inner)
    # Same variables for both: the naive loop must compute exactly CSRConv's function.
    y_csr = np.asarray(fns["csr"][0](variables, x)[2])
    y_naive = np.asarray(fns["naive"][0](variables, x)[2])
    scale = float(np.abs(y_csr).max())
    max_diff = float(np.abs(y_csr - y_naive).max())
    mac_ratio = accounting.csr_conv_macs(c_in, c_out, k, T, hw) / accounting.conv_macs(
        c_in, c_out, k, hw
    )
    device = jax.devices()[0]
    extra = (
        {}
        if baseline is None
        else {
            "baseline_ms": round(ms["baseline"], 3),
            "baseline_over_csr": round(ms["baseline"] / ms["csr"], 3),
        }
    )
    if "unrolled" in ms:
        extra.update(
            unrolled_ms=round(ms["unrolled"], 3),
            unrolled_over_csr=round(ms["unrolled"] / ms["csr"], 3),
        )
    return {
        "case": name,
        "spatial": hw,
        "batch": batch,
        "csr_ms": round(ms["csr"], 3),
        "scan_ms": round(ms["scan"], 3),
        "naive_ms": round(ms["naive"], 3),
        "conv_ms": round(ms["conv"], 3),
        "csr_over_conv": round(ms["csr"] / ms["conv"], 3),
        "mac_ratio": round(mac_ratio, 3),
        "scan_over_csr": round(ms["scan"] / ms["csr"], 3),
        "naive_over_csr": round(ms["naive"] / ms["csr"], 3),
        "compile_s": {n: round(s, 2) for n, s in compile_s.items()},
        "repeats": repeats,
        "calls_per_repeat": inner,
        "naive_max_abs_diff": max_diff,
        "naive_matches": bool(max_diff <= 1e-4 * max(scale, 1.0)),
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "load_avg": round(os.getloadavg()[0], 2),
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **extra,
    }


def run(
    batch: int,
    repeats: int,
    json_path: str | None,
    cases: Sequence[tuple] = CASES,
    baseline: type | None = None,
) -> list[dict]:
    """Runs ``cases``; prints one JSON line per case and appends it to ``json_path`` if given."""
    rows = []
    for case in cases:
        row = run_case(*case, batch=batch, repeats=repeats, baseline=baseline)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if json_path:
            with open(json_path, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def format_table(rows: list[dict]) -> str:
    columns = [
        "case",
        "HxW",
        "batch",
        "CSR ms",
        "scan ms",
        "naive ms",
        "nn.Conv ms",
        "CSR/conv",
        "MAC ratio",
        "scan/CSR",
        "naive/CSR",
    ]
    baseline = any("baseline_ms" in r for r in rows)
    if baseline:
        columns += ["baseline ms", "baseline/CSR"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [r["case"], f"{r['spatial']}x{r['spatial']}", str(r["batch"])]
        cells += [f"{r[k]:.1f}" for k in ("csr_ms", "scan_ms", "naive_ms", "conv_ms")]
        cells += [
            f"{r[k]:.2f}" for k in ("csr_over_conv", "mac_ratio", "scan_over_csr", "naive_over_csr")
        ]
        if baseline:
            cells += (
                [f"{r['baseline_ms']:.1f}", f"{r['baseline_over_csr']:.2f}"]
                if "baseline_ms" in r
                else ["-", "-"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def select(
    cases: Sequence[tuple],
    patterns: Sequence[str] | None,
    spatial: int | None,
    steps: int | None = None,
) -> list[tuple]:
    """Cases whose name contains one of ``patterns``, at ``spatial`` and with ``steps`` T
    (deduplicated) if given."""
    picked = [c for c in cases if not patterns or any(p in c[0] for p in patterns)]
    if steps is not None:
        picked = [
            (c[0].replace(f"T={c[4]}", f"T={steps}"),) + c[1:4] + (steps,) + c[5:] for c in picked
        ]
    if spatial is not None or steps is not None:
        picked = list(
            dict.fromkeys(c[:5] + (c[5] if spatial is None else spatial,) for c in picked)
        )
    if not picked:
        raise SystemExit(
            f"No case matches {list(patterns or [])}; names: {sorted({c[0] for c in cases})}."
        )
    return picked


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cases", nargs="*", default=None, help="only cases whose name contains one of these"
    )
    parser.add_argument(
        "--spatial", type=int, default=None, help="run every selected case at this HxW"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="run every selected case with this T"
    )
    parser.add_argument("--json", default=None, help="append one JSON line per case to this file")
    parser.add_argument(
        "--baseline-layer",
        default=None,
        help="a file defining an earlier CSRConv (e.g. from git show), timed as one more variant",
    )
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(
        f"# layer_bench  jax {jax.__version__}  device {device.device_kind} ({device.platform}, "
        f"{jax.device_count()} devices)  host {platform.node()}  "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    baseline = _load_layer_class(args.baseline_layer) if args.baseline_layer else None
    rows = run(
        args.batch,
        args.repeats,
        args.json,
        select(CASES, args.cases, args.spatial, args.steps),
        baseline,
    )
    print()
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
