"""Forward+backward of one depthwise conv: the XLA conv against the candidate rewrites.

Why ``csr_jax.depthwise`` uses shifted taps on CPU: this times, at MobileNetV2/EfficientNet
shapes (k = 3 and 5, strides 1 and 2), the jitted value-and-gradient (input and kernel) of

* ``xla``: ``lax.conv_general_dilated`` with ``feature_group_count`` = channels;
* ``taps``: ``csr_jax.depthwise.depthwise_conv(impl='taps')``, the sum of k*k shifted multiplies;
* ``phases``: taps, but a stride-2 conv reads its taps from a phase split (space-to-depth
  reshape) of the padded input instead of strided slices;
* ``im2col``: the k*k taps stacked on a new axis and contracted with the kernel (einsum).

Every candidate is checked against ``xla`` first; the timings are medians of interleaved repeats
(A B C D A B C D ...), so all candidates see the same background load.

Run:  python -m benchmarks.depthwise_bench [--repeats 5] [--candidates xla taps phases im2col]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from csr_jax.depthwise import depthwise_conv

DN = ("NHWC", "HWIO", "NHWC")

#: (input NHWC, k, stride): depthwise convs of the CIFAR MobileNetV2 at batch 32 (k=3) and of
#: EfficientNet-B0 (k=5) at 32x32 input.
SHAPES = [
    ((32, 32, 32, 96), 3, 1),
    ((32, 32, 32, 144), 3, 2),
    ((32, 16, 16, 192), 3, 1),
    ((32, 16, 16, 384), 3, 2),
    ((32, 8, 8, 576), 3, 1),
    ((32, 4, 4, 960), 3, 1),
    ((32, 16, 16, 240), 5, 1),
    ((32, 16, 16, 144), 5, 2),
    ((32, 8, 8, 672), 5, 1),
]


def _out_size(size: int, k: int, s: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - k) // s + 1


def xla(x, w, s, p):
    return lax.conv_general_dilated(
        x, w, (s, s), p, dimension_numbers=DN, feature_group_count=x.shape[-1]
    )


def taps(x, w, s, p):
    return depthwise_conv(x, w, s, p, impl="taps")


def phases(x, w, s, p):
    """Stride s as s*s phases of the padded input: every tap is a unit-stride slice of one phase."""
    if s == 1:
        return taps(x, w, s, p)
    k = w.shape[0]
    n, h, wd, c = x.shape
    ho, wo = _out_size(h, k, s, p[0]), _out_size(wd, k, s, p[1])
    hp, wp = s * (ho + (k - 1) // s), s * (wo + (k - 1) // s)
    xp = jnp.pad(x, ((0, 0), (p[0][0], hp - h - p[0][0]), (p[1][0], wp - wd - p[1][0]), (0, 0)))
    xp = xp.reshape(n, hp // s, s, wp // s, s, c)
    y = None
    for i in range(k):
        for j in range(k):
            term = xp[:, i // s : i // s + ho, i % s, j // s : j // s + wo, j % s, :] * w[i, j, 0]
            y = term if y is None else y + term
    return y


def im2col(x, w, s, p):
    k = w.shape[0]
    n, h, wd, c = x.shape
    ho, wo = _out_size(h, k, s, p[0]), _out_size(wd, k, s, p[1])
    xp = jnp.pad(x, ((0, 0), p[0], p[1], (0, 0)))
    cols = jnp.stack(
        [
            lax.slice(
                xp, (0, i, j, 0), (n, i + (ho - 1) * s + 1, j + (wo - 1) * s + 1, c), (1, s, s, 1)
            )
            for i in range(k)
            for j in range(k)
        ],
        axis=-1,
    )
    return jnp.einsum("nhwct,ct->nhwc", cols, w.reshape(k * k, c).T)


CANDIDATES = {"xla": xla, "taps": taps, "phases": phases, "im2col": im2col}


def _value_and_grad(f, s, p):
    return jax.jit(
        jax.value_and_grad(lambda x, w: jnp.sum(f(x, w, s, p) ** 2) * 0.5, argnums=(0, 1))
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES)
    )
    args = parser.parse_args(argv)
    names = ["xla"] + [c for c in args.candidates if c != "xla"]
    print(
        f"# depthwise_bench  jax {jax.__version__}  {jax.devices()[0].device_kind}  "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  load {os.getloadavg()[0]:.2f}"
    )
    print(
        "| input (N, H, W, C) | k | stride | "
        + " | ".join(f"{n} ms" for n in names)
        + " | "
        + " | ".join(f"xla/{n}" for n in names[1:])
        + " |"
    )
    print("|---|---|---|" + "---|" * (2 * len(names) - 1))
    rng = np.random.default_rng(0)
    for shape, k, s in SHAPES:
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), jnp.float32)
        p = ((k // 2, k // 2), (k // 2, k // 2))
        fns = {n: _value_and_grad(CANDIDATES[n], s, p) for n in names}
        ref = jax.block_until_ready(fns["xla"](x, w))
        for n, f in fns.items():
            out = jax.block_until_ready(f(x, w))
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
                np.testing.assert_allclose(
                    a, b, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))), err_msg=n
                )
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):
            for n, f in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(x, w))
                times[n].append(time.perf_counter() - t0)
        ms = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        print(
            f"| {shape} | {k} | {s} | "
            + " | ".join(f"{ms[n]:.1f}" for n in names)
            + " | "
            + " | ".join(f"{ms['xla'] / ms[n]:.1f}" for n in names[1:])
            + " |",
            flush=True,
        )
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
