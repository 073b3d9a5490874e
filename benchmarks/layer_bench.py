"""Forward+backward time of one CSR-Conv layer: as built, naive step-by-step, and ``nn.Conv``.

Why three variants: ``nn.Conv`` with the same channels is what CSR-Conv replaces, and the
naive version runs both convolutions step by step like the authors' reference code, which is
what our batched input path + scanned hidden path must beat. The MAC ratio CSR/conv (from
``csr_jax.accounting``) says how much slower CSR may fairly be.

Run:  python -m benchmarks.layer_bench            (CPU: batch 128, a few repeats)
      python -m benchmarks.layer_bench --batch 32 --repeats 3 --json out.jsonl
It runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from csr_jax import CSRConv, accounting
from csr_jax.csr_conv import csr_group_sizes, reference_kernel_init

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
    """The reference's structure: a Python loop over T running U and V conv by conv."""

    features: int
    kernel_size: int
    steps: int

    @nn.compact
    def __call__(self, x):
        k, T = self.kernel_size, self.steps
        c_in = x.shape[-1]
        g_in, g_out = csr_group_sizes(c_in, self.features, T)
        U = self.param("input_kernel", reference_kernel_init, (k, k, g_in, g_out))
        V = self.param("hidden_kernel", reference_kernel_init, (k, k, g_out, g_out))
        alpha = self.param("alpha", nn.initializers.constant(0.5), ())
        beta = self.param("beta", nn.initializers.constant(0.5), ())
        if T * g_in > c_in:
            x = jnp.concatenate([x] * -(-T * g_in // c_in), axis=-1)[..., : T * g_in]
        pad = [((k - 1) // 2,) * 2] * 2
        conv = lambda v, w: jax.lax.conv_general_dilated(v, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
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


def _time_fwd_bwd(module: nn.Module, x: jax.Array, repeats: int) -> tuple[float, float, jax.Array]:
    params = module.init(jax.random.key(0), x)["params"]

    @jax.jit
    def step(params, x):
        def loss(p, x):
            y = module.apply({"params": p}, x)
            return jnp.mean(y * y), y

        (l, y), grads = jax.value_and_grad(loss, has_aux=True)(params, x)
        return l, grads, y

    t0 = time.perf_counter()
    out = step(params, x)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, compile_s, out[2]


def run(batch: int, repeats: int, json_path: str | None, cases=CASES) -> list[dict]:
    device = jax.devices()[0]
    rows = []
    for name, c_in, c_out, k, T, hw in cases:
        x = jax.random.normal(jax.random.key(1), (batch, hw, hw, c_in), jnp.float32)
        csr_ms, csr_c, y_csr = _time_fwd_bwd(CSRConv(c_out, k, T, padding="SAME"), x, repeats)
        naive_ms, naive_c, y_naive = _time_fwd_bwd(NaiveCSRConv(c_out, k, T), x, repeats)
        conv_ms, conv_c, _ = _time_fwd_bwd(nn.Conv(c_out, (k, k), padding="SAME", use_bias=False), x, repeats)
        # Same init key and parameter shapes: both CSR variants must compute the same function.
        same = bool(np.allclose(np.asarray(y_csr), np.asarray(y_naive), rtol=1e-3, atol=1e-3))
        mac_ratio = accounting.csr_conv_macs(c_in, c_out, k, T, hw) / accounting.conv_macs(c_in, c_out, k, hw)
        row = dict(
            case=name, spatial=hw, batch=batch, csr_ms=round(csr_ms, 2), naive_ms=round(naive_ms, 2),
            conv_ms=round(conv_ms, 2), csr_over_conv=round(csr_ms / conv_ms, 2), mac_ratio=round(mac_ratio, 2),
            naive_over_csr=round(naive_ms / csr_ms, 2), compile_s=dict(csr=round(csr_c, 2), naive=round(naive_c, 2), conv=round(conv_c, 2)),
            naive_matches=same, device=device.device_kind, platform=device.platform, jax=jax.__version__,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        if json_path:
            with open(json_path, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| case | HxW | CSR ms | naive ms | nn.Conv ms | CSR/conv | MAC ratio | naive/CSR |\n|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['spatial']}x{r['spatial']} | {r['csr_ms']:.1f} | {r['naive_ms']:.1f} | {r['conv_ms']:.1f} | "
            f"{r['csr_over_conv']:.2f} | {r['mac_ratio']:.2f} | {r['naive_over_csr']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="append one JSON line per case to this file")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"# layer_bench  jax {jax.__version__}  device {device.device_kind} ({device.platform}, "
          f"{jax.device_count()} devices)  host {platform.node()}  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    rows = run(args.batch, args.repeats, args.json)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
