"""csr_jax against PyTorch on the same CPU: one full training step of the same network, same batch.

Why: csr_jax's own benchmarks compare CSR with ordinary convs *within* JAX; whether a network
trains as fast as it would in PyTorch on the same machine needs a peer. The PyTorch networks
(``benchmarks/torch_models.py``) are written from the published definitions; their CSR layer is a
straightforward step-by-step loop over the T channel chunks, as the authors' code runs it.

Both sides run the same thing: the same network (parameter counts are checked equal before
anything is timed), the same batch of 32x32 fp32 images, softmax cross-entropy, SGD with momentum
0.9 and weight decay 5e-4 on kernels only (lr 0.05), BatchNorm in training mode -- forward, loss,
backward and update. The JAX side is csr_jax's jitted train step
(``csr_jax.train.steps.make_train_step``, built as ``benchmarks.model_bench`` builds it); the
PyTorch side is eager (``loss.backward(); optimizer.step()``), ``torch.set_num_threads`` = the
CPU count, XLA with its default thread settings. After warm-up (and JAX's compile) the two are
timed alternately (JAX, PyTorch, JAX, PyTorch, ...), so a shared machine's changing load hits
both alike; each timing chains enough steps to last ``--min-s``; the median over ``--repeats``
is reported, and the ratio is of medians measured in this one run.

Run (needs the optional extra: ``pip install -e '.[bench]'``, a CPU build of torch):
    python -m benchmarks.torch_peer                         # the four default configurations
    python -m benchmarks.torch_peer --configs mbv2c --repeats 7 --json peer.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

try:
    import torch
    import torch.nn.functional as F
except ImportError as error:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "benchmarks.torch_peer needs PyTorch: pip install -e '.[bench]' "
        "(a CPU-only build: pip install torch --index-url https://download.pytorch.org/whl/cpu)."
    ) from error

import flax
import jax
import numpy as np

import csr_jax
from benchmarks import torch_models
from benchmarks.model_bench import Built, Case, build

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """One network at one batch size, as csr_jax builds it and as PyTorch builds it."""

    id: str
    title: str
    model: str
    csr: str | None
    batch: int
    torch_model: Callable[[], torch.nn.Module]

    def case(self) -> Case:
        return Case(self.id, self.model, self.csr or "reference", self.batch, 32, "fp32", 10)


CONFIGS = [
    PeerConfig(
        "mbv2c",
        "MobileNetV2-CIFAR ordinary",
        "mobilenetv2_cifar",
        None,
        32,
        lambda: torch_models.MobileNetV2Cifar(csr=False),
    ),
    PeerConfig(
        "mbv2c-reference",
        "MobileNetV2-CIFAR CSR reference",
        "mobilenetv2_cifar",
        "reference",
        32,
        lambda: torch_models.MobileNetV2Cifar(csr=True),
    ),
    PeerConfig(
        "resnet20", "ResNet-20 ordinary", "resnet20", None, 128, lambda: torch_models.ResNetCifar(3)
    ),
    PeerConfig(
        "resnet20-t2",
        "ResNet-20 CSR t2",
        "resnet20",
        "t2",
        128,
        lambda: torch_models.ResNetCifar(3, steps=2),
    ),
]


class TorchTrainer:
    """The PyTorch side: model, SGD (decay on >= 2-D parameters, as csr_jax's optimizer), a batch."""

    def __init__(
        self, model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, channels_last: bool
    ):
        self.model = model.train()
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": WEIGHT_DECAY},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=LR,
            momentum=MOMENTUM,
        )
        self.images = torch.from_numpy(
            np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        )  # NHWC -> NCHW
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def run(self, steps: int) -> float:
        """Runs ``steps`` training steps; returns their wall time."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(self.images), self.labels)
            loss.backward()
            self.optimizer.step()
        loss.item()  # eager CPU ops are synchronous already; this only makes it explicit
        return time.perf_counter() - t0


def _chain(seconds_per_step: float, min_s: float) -> int:
    return max(1, int(np.ceil(min_s / max(seconds_per_step, 1e-6))))


def run_config(config: PeerConfig, repeats: int, min_s: float, channels_last: bool) -> dict:
    """Builds both sides, checks their parameter counts, warms up, times them alternately."""
    variant = "csr" if config.csr else "ordinary"
    built: Built = build(config.case(), variant)
    jax_params = csr_jax.count_params(built.state.params)
    torch_model = config.torch_model()
    torch_params = torch_models.count_params(torch_model)
    if jax_params != torch_params:
        raise SystemExit(
            f"{config.title}: csr_jax has {jax_params:,} parameters, the PyTorch model "
            f"{torch_params:,}; the two are not the same network, so timing them means nothing."
        )
    trainer = TorchTrainer(
        torch_model,
        np.asarray(built.batch["image"]),
        np.asarray(built.batch["label"]),
        channels_last,
    )
    load_before = os.getloadavg()[0]
    built.run(2)  # first executions allocate
    trainer.run(2)  # oneDNN primitive creation, allocator warm-up
    chain_jax = _chain(built.run(1), min_s)
    chain_torch = _chain(trainer.run(1), min_s)
    jax_s, torch_s = [], []
    for _ in range(repeats):
        jax_s.append(built.run(chain_jax) / chain_jax)
        torch_s.append(trainer.run(chain_torch) / chain_torch)
    load_after = os.getloadavg()[0]
    jax_ips = config.batch / statistics.median(jax_s)
    torch_ips = config.batch / statistics.median(torch_s)
    return dict(
        config=config.id,
        title=config.title,
        model=config.model,
        csr=config.csr,
        batch=config.batch,
        image=32,
        dtype="fp32",
        params=jax_params,
        jax_images_per_s=round(jax_ips, 2),
        torch_images_per_s=round(torch_ips, 2),
        jax_over_torch=round(jax_ips / torch_ips, 3),
        jax_step_ms=[round(t * 1e3, 1) for t in jax_s],
        torch_step_ms=[round(t * 1e3, 1) for t in torch_s],
        steps_per_timing=[chain_jax, chain_torch],
        jax_compile_s=round(built.lower_s + built.compile_s, 1),
        torch_channels_last=channels_last,
        load_avg=[round(load_before, 2), round(load_after, 2)],
        time=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def format_table(rows: Sequence[dict]) -> str:
    """The Markdown table of a run: throughputs and the csr_jax/PyTorch ratio per configuration."""
    lines = [
        "| network | batch | params | csr_jax img/s | PyTorch img/s | csr_jax / PyTorch | load (start, end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['title']} | {r['batch']} | {r['params']:,} | {_rate(r['jax_images_per_s'])} "
            f"| {_rate(r['torch_images_per_s'])} | {r['jax_over_torch']:.2f} "
            f"| {r['load_avg'][0]:.2f}, {r['load_avg'][1]:.2f} |"
        )
    return "\n".join(lines)


def _cpu() -> str:
    """CPU model and its widest x86 vector extension, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
        [],
    )
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {simd}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ids = [c.id for c in CONFIGS]
    parser.add_argument(
        "--configs", nargs="+", default=ids, choices=ids, help="configurations to run, in order"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="alternating timings per side (median reported)"
    )
    parser.add_argument(
        "--min-s", type=float, default=2.0, help="each timing chains steps to last at least this"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=os.cpu_count(), help="torch.set_num_threads"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="PyTorch in channels_last memory format"
    )
    parser.add_argument(
        "--json", default=None, help="append one JSON line per configuration to this file"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.min_s < 0 or args.torch_threads < 1:
        parser.error("--repeats and --torch-threads must be >= 1, --min-s >= 0.")
    torch.set_num_threads(args.torch_threads)
    print(
        f"# torch_peer  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  host {platform.node()}  "
        f"cpu {_cpu()} x{os.cpu_count()}  jax {jax.__version__} ({jax.devices()[0].platform})  flax {flax.__version__}  "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    rows = []
    for config_id in args.configs:
        row = run_config(
            next(c for c in CONFIGS if c.id == config_id),
            args.repeats,
            args.min_s,
            args.channels_last,
        )
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    print()
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
