"""Training throughput of whole networks: ordinary convs vs CSR-Conv, the real jitted train step.

What is timed is ``csr_jax.train.steps.make_train_step`` -- forward, backward, SGD-with-momentum
update, weight decay and BatchNorm statistics -- on a synthetic batch that already lives on the
device (input is not timed), after compilation, with ``block_until_ready``: the median of several
repeats of a few chained steps. Per network it also reports the compile time and memory:

* ``planned_bytes``: the compiled executable's ``memory_analysis()``, argument + output + temp
  - alias (alias: the donated train state, updated in place). Exact and per executable, on
  every platform. On CPU it is the only memory figure.
* ``peak_bytes_in_use``: on GPU/TPU, ``device.memory_stats()['peak_bytes_in_use']`` after the
  timed steps. JAX cannot reset that peak, so it belongs to ONE network only when each network
  runs in its own process (``--isolate``, which ``benchmarks/gpu_bench.sh`` uses).

Why a CSR network can be slower than its MAC count says: CSR-Conv adds T - 1 small sequential
steps per layer, each a dot/conv plus an elementwise update over a g_out-channel slice, so it
moves more activation bytes per MAC than the conv it replaces; ``benchmarks/RESULTS.md`` has the
numbers and the profiles.

Run:  python -m benchmarks.model_bench --preset cpu              (small sizes, minutes on 2 cores)
      python -m benchmarks.model_bench --preset gpu --json out.jsonl
      python -m benchmarks.model_bench --preset cpu --cases mbv2c --variants ordinary csr csr-scan
It imports only jax, flax, optax and csr_jax's models/train step (not grain, orbax or
ml-collections), so it runs unchanged on a bare GPU image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from csr_jax import accounting, depthwise, models

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
LABELS = {
    "mobilenetv2_cifar": "MobileNetV2-CIFAR",
    "mobilenetv2": "MobileNetV2",
    "efficientnet_b0": "EfficientNet-B0",
    "resnet56": "ResNet-56",
    "resnet50": "ResNet-50",
}
_ROW_MARK = "MODEL_BENCH_ROW "


@dataclasses.dataclass(frozen=True)
class Case:
    """One network at one batch size, image size and compute dtype.

    ``csr`` is the preset the CSR variant uses: the authors' ``reference`` configuration for
    MobileNetV2 (expand T=3, project T=4); ``t4`` (every 3x3 conv, and for ResNet-50 the 1x1
    convs where CSR is smaller, with T=4) for the ResNets, which have no published configuration.
    ``overrides`` are backbone fields (the tiny preset shrinks the network with them).
    """

    id: str
    model: str
    csr: str
    batch: int
    image: int
    dtype: str
    num_classes: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def title(self) -> str:
        return f"{LABELS.get(self.model, self.model)} {self.image}px b{self.batch} {self.dtype}"


def _case(
    model: str,
    csr: str,
    batch: int,
    image: int,
    dtype: str,
    num_classes: int,
    short: str,
    overrides: tuple[tuple[str, Any], ...] = (),
) -> Case:
    return Case(
        f"{short}-b{batch}-{image}px-{dtype}",
        model,
        csr,
        batch,
        image,
        dtype,
        num_classes,
        overrides,
    )


# Priority order: if a deadline stops the run early, the cases that matter most are done.
PRESETS: dict[str, list[Case]] = {
    "gpu": [
        _case("mobilenetv2_cifar", "reference", 128, 32, "fp32", 10, "mbv2c"),
        _case("mobilenetv2_cifar", "reference", 128, 32, "bf16", 10, "mbv2c"),
        _case("mobilenetv2_cifar", "reference", 512, 32, "bf16", 10, "mbv2c"),
        _case("mobilenetv2", "reference", 128, 224, "bf16", 1000, "mbv2"),
        _case("resnet56", "t4", 128, 32, "fp32", 10, "resnet56"),
        _case("resnet50", "t4", 128, 224, "bf16", 1000, "resnet50"),
        _case("mobilenetv2_cifar", "reference", 512, 32, "fp32", 10, "mbv2c"),
        _case("mobilenetv2", "reference", 128, 224, "fp32", 1000, "mbv2"),
        _case("resnet56", "t4", 128, 32, "bf16", 10, "resnet56"),
        _case("resnet50", "t4", 128, 224, "fp32", 1000, "resnet50"),
    ],
    # Small sizes, chosen when XLA:CPU's depthwise convs made a MobileNetV2-CIFAR step at batch 32 take ~30 s
    # (before csr_jax.depthwise): 16x16 CIFAR nets at batch 16, 64x64 ImageNet nets at batch 8.
    "cpu": [
        _case("mobilenetv2_cifar", "reference", 16, 16, "fp32", 10, "mbv2c"),
        _case("mobilenetv2_cifar", "reference", 16, 16, "bf16", 10, "mbv2c"),
        _case("resnet56", "t4", 16, 16, "fp32", 10, "resnet56"),
        _case("mobilenetv2", "reference", 8, 64, "fp32", 1000, "mbv2"),
        _case("resnet50", "t4", 8, 64, "fp32", 1000, "resnet50"),
    ],
    # The depthwise networks at the CPU speed target's size (32x32, batch 32, fp32).
    "cpu-dw": [
        _case("mobilenetv2_cifar", "reference", 32, 32, "fp32", 10, "mbv2c"),
        _case("efficientnet_b0", "t4", 32, 32, "fp32", 1000, "effb0"),
        _case("mobilenetv2", "reference", 32, 32, "fp32", 1000, "mbv2"),
    ],
    # For tests: the CIFAR MobileNetV2 cut to one inverted residual (32 -> 192 -> 24; its expand
    # and project convs are CSR), batch 2, 8x8.
    "tiny": [
        _case(
            "mobilenetv2_cifar",
            "reference",
            2,
            8,
            "fp32",
            10,
            "mbv2c-tiny",
            overrides=(("cfg", ((6, 24, 1, 1),)),),
        ),
    ],
}

#: Variants of a case. ``csr`` is the layer as shipped (``unroll=None``: hidden steps unrolled for
#: T <= 8); ``csr-scan`` forces the rolled ``nn.scan`` (``unroll=1``); ``csr-baseline`` uses the
#: ``CSRConv`` class of the file given by ``--baseline-layer`` (an earlier version of the layer).
#: ``ordinary-xla`` / ``csr-xla``: the same networks with the conv factory's depthwise and 1x1
#: convs (and CSRConv's depthwise paths) traced as XLA convs (``csr_jax.depthwise.forced_impl('xla')``):
#: the path GPU/TPU take, and the only one on CPU before the CPU forms (shifted taps, dots) existed.
VARIANTS = ("ordinary", "csr", "csr-scan", "csr-baseline", "ordinary-xla", "csr-xla")


def _load_layer_class(path: str) -> type:
    """``CSRConv`` from a Python file (an earlier version of ``csr_jax/csr_conv.py``)."""
    spec = importlib.util.spec_from_file_location("csr_conv_baseline", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--baseline-layer {path!r} is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.CSRConv


def make_model(case: Case, variant: str, baseline_layer: type | None = None):
    """The ``flax.linen`` network of a case/variant, through the model registry.

    ``baseline_layer`` is the CSR layer class the ``csr-baseline`` variant builds: the conv
    factory's ``csr_conv`` field (the shipped ``CSRConv`` otherwise).
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose from {VARIANTS}.")
    kwargs = dict(case.overrides)
    if variant == "csr-baseline" and baseline_layer is not None:
        kwargs["csr_conv"] = baseline_layer
    ordinary = variant in ("ordinary", "ordinary-xla")
    if not ordinary:
        kwargs["unroll"] = 1 if variant == "csr-scan" else None
    return models.create(
        case.model,
        num_classes=case.num_classes,
        csr=None if ordinary else case.csr,
        dtype=DTYPES[case.dtype],
        **kwargs,
    )


def _optimizer() -> optax.GradientTransformation:
    """The reference's SGD (lr 0.05, momentum 0.9, weight decay 5e-4 on kernels only), as
    ``csr_jax.train.optim.make_optimizer`` builds it for the reference config."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(optax.add_decayed_weights(5e-4, decay_mask), optax.sgd(0.05, momentum=0.9))


@dataclasses.dataclass
class Built:
    """A compiled train step and the device-resident state and batch it runs on."""

    variant: str
    compiled: Any
    state: Any
    batch: dict[str, jax.Array]
    rng: jax.Array
    lower_s: float
    compile_s: float
    memory: dict[str, int]
    params: int
    macs_per_image: int

    def run(self, steps: int) -> float:
        """Runs ``steps`` chained train steps; returns the wall time until all are done."""
        state = self.state
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = self.compiled(state, self.batch, self.rng)
        jax.block_until_ready((state, metrics))
        elapsed = time.perf_counter() - t0
        self.state = state  # the old state was donated to the step
        return elapsed


def _memory_analysis(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    out = {
        name: int(getattr(stats, f"{name}_size_in_bytes", 0))
        for name in ("argument", "output", "temp", "alias")
    }
    out["planned_bytes"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def build(case: Case, variant: str, baseline_layer: type | None = None) -> Built:
    """Creates the network, its train state and batch on the device, lowers and compiles the step."""
    # csr_jax.train loads lazily: the train step needs jax, flax and optax, not the loop's orbax/grain.
    from csr_jax.train import state as state_mod
    from csr_jax.train import steps as steps_mod
    from csr_jax.train.mesh import batch_sharding, make_data_mesh

    mesh = make_data_mesh(jax.devices()[:1])
    model = make_model(case, variant, baseline_layer)
    shape = (case.image, case.image, 3)
    # Counted with the shipped CSRConv (the accounting recognises that class): a baseline layer
    # has the same architecture, hence the same MACs.
    macs = sum(
        r.macs
        for r in accounting.layer_report(
            make_model(case, variant),
            jax.ShapeDtypeStruct((1, *shape), jnp.float32),
            method=lambda m, x: m(x, train=False),
        )
    )
    forced = depthwise.forced_impl("xla") if variant.endswith("-xla") else contextlib.nullcontext()
    with forced:
        state = state_mod.create_train_state(model, _optimizer(), jax.random.key(0), shape, mesh)
        step = steps_mod.make_train_step(
            mesh, state, num_classes=case.num_classes, learning_rate_fn=lambda _: jnp.float32(0.05)
        )
        rng = np.random.default_rng(0)
        sharding = batch_sharding(mesh)
        batch = {
            "image": jax.device_put(
                rng.standard_normal((case.batch, *shape), np.float32), sharding
            ),
            "label": jax.device_put(
                rng.integers(0, case.num_classes, case.batch).astype(np.int32), sharding
            ),
        }
        key = jax.random.key(1)
        t0 = time.perf_counter()
        lowered = step.lower(state, batch, key)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return Built(
        variant,
        compiled,
        state,
        batch,
        key,
        t1 - t0,
        t2 - t1,
        _memory_analysis(compiled),
        params,
        macs,
    )


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "host": platform.node(),
    }


def run_case(
    case: Case,
    variants: Sequence[str],
    repeats: int,
    target_s: float | None,
    baseline_layer: type | None = None,
    isolated: bool = False,
) -> list[dict]:
    """Builds every variant of ``case``, then times them interleaved (A B A B ...), in this process.

    Interleaving puts every variant under the same background load, which matters on a shared
    CPU; each repeat chains enough steps to last about ``target_s`` (at least one).
    """
    load_before = os.getloadavg()[0]
    if target_s is None:
        target_s = 0.0 if jax.devices()[0].platform == "cpu" else 0.5
    built = [build(case, v, baseline_layer) for v in variants]
    per_step = {}
    for b in built:
        b.run(2)  # warm-up: first executions allocate and load
        per_step[b.variant] = b.run(1)
    chain = {v: max(1, min(50, math.ceil(target_s / max(t, 1e-6)))) for v, t in per_step.items()}
    times: dict[str, list[float]] = {b.variant: [] for b in built}
    for _ in range(repeats):
        for b in built:
            times[b.variant].append(b.run(chain[b.variant]) / chain[b.variant])
    peak = _peak_bytes() if isolated else None
    load_after = os.getloadavg()[0]
    rows = []
    for b in built:
        step_s = statistics.median(times[b.variant])
        memory = dict(b.memory)
        source = "memory_analysis"
        if peak is not None and len(built) == 1:
            memory["peak_bytes_in_use"] = peak
            source = "peak_bytes_in_use"
        rows.append(
            dict(
                case=case.id,
                title=case.title,
                model=case.model,
                csr=None if b.variant in ("ordinary", "ordinary-xla") else case.csr,
                variant=b.variant,
                batch=case.batch,
                image=case.image,
                dtype=case.dtype,
                images_per_s=round(case.batch / step_s, 2),
                step_ms=round(step_s * 1e3, 3),
                step_ms_repeats=[round(t * 1e3, 3) for t in times[b.variant]],
                steps_per_repeat=chain[b.variant],
                lower_s=round(b.lower_s, 2),
                compile_s=round(b.compile_s, 2),
                memory=memory,
                memory_source=source,
                params=b.params,
                macs_per_image=b.macs_per_image,
                load_avg=[round(load_before, 2), round(load_after, 2)],
                time=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                **_environment(),
            )
        )
    return rows


# ------------------------------------------------------------------------------------------
# One process per (case, variant): a clean peak_bytes_in_use, and a crash costs one row.


def _run_isolated(
    case: Case,
    variant: str,
    repeats: int,
    target_s: float | None,
    baseline_layer: str | None,
    timeout: float,
) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.model_bench",
        "--worker",
        json.dumps(dataclasses.asdict(case)),
        "--variants",
        variant,
        "--repeats",
        str(repeats),
    ]
    if target_s is not None:
        command += ["--target-s", str(target_s)]
    if baseline_layer:
        command += ["--baseline-layer", baseline_layer]
    error_row = {
        "case": case.id,
        "title": case.title,
        "model": case.model,
        "variant": variant,
        "batch": case.batch,
        "image": case.image,
        "dtype": case.dtype,
    }
    try:
        done = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return dict(error_row, error=f"timed out after {timeout:.0f} s (deadline)")
    for line in done.stdout.splitlines():
        if line.startswith(_ROW_MARK):
            return json.loads(line[len(_ROW_MARK) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return dict(error_row, error=f"exit {done.returncode}: " + " | ".join(tail))


def _worker(args: argparse.Namespace) -> None:
    fields = json.loads(args.worker)
    fields["overrides"] = tuple((k, _tuplify(v)) for k, v in fields.get("overrides", ()))
    case = Case(**fields)
    baseline = _load_layer_class(args.baseline_layer) if args.baseline_layer else None
    (row,) = run_case(case, args.variants, args.repeats, args.target_s, baseline, isolated=True)
    print(_ROW_MARK + json.dumps(row), flush=True)


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


# ------------------------------------------------------------------------------------------
# The ratio table.


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:,.0f}"


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.1f}"


def _memory_of(row: dict) -> int | None:
    memory = row.get("memory") or {}
    return memory.get("peak_bytes_in_use") or memory.get("planned_bytes")


def format_table(rows: list[dict]) -> str:
    """One line per CSR variant of a case: throughputs, ratio to ordinary, MAC and memory ratios.

    ``per-MAC speed`` is (CSR img/s x CSR MACs) / (ordinary img/s x ordinary MACs): 1.0 when
    CSR's multiply-accumulates run as fast as the ordinary network's, below 1 when CSR is
    slower than its MAC count predicts.
    """
    head = (
        "| case | variant | ordinary img/s | CSR img/s | CSR/ordinary | MAC ratio | per-MAC speed "
        "| memory MiB (ord / CSR) | memory ratio | compile s (ord / CSR) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    by_case: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["variant"]] = row
    for case_id, variants in by_case.items():
        ordinary = variants.get("ordinary")
        for name, row in variants.items():
            if name == "ordinary":
                continue
            title = row.get("title", case_id)
            if "error" in row or ordinary is None or "error" in ordinary:
                why = row.get("error") or (ordinary or {}).get("error") or "no ordinary row"
                lines.append(f"| {title} | {name} | - | - | - | - | - | - | - | {why} |")
                continue
            mem_o, mem_c = _memory_of(ordinary), _memory_of(row)
            speed = row["images_per_s"] / ordinary["images_per_s"]
            macs = row["macs_per_image"] / ordinary["macs_per_image"]
            lines.append(
                f"| {title} | {name} | {_rate(ordinary['images_per_s'])} | {_rate(row['images_per_s'])} "
                f"| {speed:.2f} | {macs:.2f} | {speed * macs:.2f} "
                f"| {_mib(mem_o)} / {_mib(mem_c)} | {(mem_c / mem_o) if mem_o and mem_c else float('nan'):.2f} "
                f"| {ordinary['compile_s']:.0f} / {row['compile_s']:.0f} |"
            )
    sources = sorted({r.get("memory_source") for r in rows if r.get("memory_source")})
    if sources:
        lines.append("")
        lines.append(
            "memory: "
            + ", ".join(
                {
                    "peak_bytes_in_use": "device peak_bytes_in_use (one network per process)",
                    "memory_analysis": "compiled step's memory_analysis(): argument + output + temp - alias",
                }[s]
                for s in sources
            )
        )
    return "\n".join(lines)


def select_cases(preset: str, patterns: Sequence[str] | None) -> list[Case]:
    """The preset's cases whose id contains any of ``patterns`` (all when None)."""
    cases = PRESETS[preset]
    if patterns:
        cases = [c for c in cases if any(p in c.id for p in patterns)]
        if not cases:
            raise SystemExit(
                f"No {preset!r} case matches {list(patterns)}; ids: {[c.id for c in PRESETS[preset]]}."
            )
    return cases


def run(
    cases: Sequence[Case],
    variants: Sequence[str],
    *,
    repeats: int,
    target_s: float | None,
    isolate: bool,
    json_path: str | None = None,
    deadline_s: float | None = None,
    baseline_layer: str | None = None,
) -> list[dict]:
    """Runs every case, prints and returns its rows (appending them to ``json_path`` if given)."""
    if "csr-baseline" in variants and not baseline_layer:
        raise SystemExit(
            "Variant 'csr-baseline' needs --baseline-layer PATH (a file defining CSRConv)."
        )
    baseline_cls = _load_layer_class(baseline_layer) if baseline_layer and not isolate else None
    start = time.perf_counter()
    rows: list[dict] = []
    for case in cases:
        left = None if deadline_s is None else deadline_s - (time.perf_counter() - start)
        if left is not None and left <= 0:
            case_rows = [
                {"case": case.id, "title": case.title, "variant": v, "error": "skipped: deadline"}
                for v in variants
            ]
        elif isolate:
            case_rows = []
            for v in variants:
                left = None if deadline_s is None else deadline_s - (time.perf_counter() - start)
                case_rows.append(
                    _run_isolated(
                        case,
                        v,
                        repeats,
                        target_s,
                        baseline_layer,
                        timeout=left if left is not None else 3600.0,
                    )
                    if left is None or left > 0
                    else {
                        "case": case.id,
                        "title": case.title,
                        "variant": v,
                        "error": "skipped: deadline",
                    }
                )
        else:
            case_rows = run_case(case, variants, repeats, target_s, baseline_cls)
        for row in case_rows:
            print(json.dumps(row), flush=True)
            if json_path:
                with open(json_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
        rows.extend(case_rows)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--cases", nargs="*", default=None, help="run only cases whose id contains one of these"
    )
    parser.add_argument("--variants", nargs="+", default=["ordinary", "csr"], choices=VARIANTS)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per variant (median reported)"
    )
    parser.add_argument(
        "--target-s",
        type=float,
        default=None,
        help="seconds per repeat (steps are chained to fill it); default 0.5 on accelerators, "
        "0 on CPU (one step per repeat)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="one process per (case, variant), for a clean device peak_bytes_in_use; this "
        "process then never touches the device, so the workers get all of its memory",
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="stop after this many seconds: a running isolated network is killed, the networks "
        "not started are reported as skipped",
    )
    parser.add_argument(
        "--baseline-layer", default=None, help="file whose CSRConv the 'csr-baseline' variant uses"
    )
    parser.add_argument(
        "--json", default=None, help="append one JSON line per (case, variant) to this file"
    )
    parser.add_argument(
        "--table",
        default=None,
        metavar="JSONL",
        help="only print the ratio table of the rows in this file (e.g. a GPU run's --json)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    if args.table:
        with open(args.table) as f:
            print(format_table([json.loads(line) for line in f if line.strip()]))
        return
    device = "(per row)" if args.isolate else "{device} ({platform})".format(**_environment())
    print(
        f"# model_bench  preset {args.preset}  jax {jax.__version__}  device {device}  host {platform.node()}  "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  load {os.getloadavg()[0]:.2f}  "
        f"isolate {args.isolate}",
        flush=True,
    )
    rows = run(
        select_cases(args.preset, args.cases),
        args.variants,
        repeats=args.repeats,
        target_s=args.target_s,
        isolate=args.isolate,
        json_path=args.json,
        deadline_s=args.deadline_s,
        baseline_layer=args.baseline_layer,
    )
    print()
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
