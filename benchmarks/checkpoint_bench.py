"""Cost of checkpoint verification: save and restore time with and without CRC-32 checksums.

    python -m benchmarks.checkpoint_bench [--model resnet50] [--repeats 3]

Builds a train state of the model's real shapes (params + BatchNorm statistics + SGD momentum,
filled with random values so that compression has no easy job), then times
`Checkpointer.save` + `wait` and `Checkpointer.restore` with `verify` on and off, in one process,
alternating, and prints the medians and their ratio. Nothing is compiled: the state is made from
`jax.eval_shape` of the model's init.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_state(model_name: str):
    from csr_jax import models
    from csr_jax.train.state import TrainState

    model = models.create(model_name, num_classes=1000)
    shape = (1, *models.default_input_shape(model_name))
    abstract = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
            jnp.zeros(shape),
            train=False,
        )
    )
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), abstract
    )
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.sgd(0.1, momentum=0.9),
        batch_stats=variables.get("batch_stats", {}),
    )
    momentum = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32)) if x.ndim else x,
        state.opt_state,
    )
    return state.replace(step=jnp.asarray(0, jnp.int32), opt_state=momentum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from csr_jax.train.checkpoint import Checkpointer

    state = make_state(args.model)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    n_all = sum(x.size for x in jax.tree.leaves(state))
    print(
        f"{args.model}: {n_params:,} params, {n_all:,} values saved "
        f"({n_all * 4 / 1e6:.0f} MB float32); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    times: dict[tuple[str, bool], list[float]] = {}
    root = tempfile.mkdtemp(prefix="ckpt_bench_")
    try:
        for rep in range(args.repeats):
            for verify in (False, True):
                workdir = os.path.join(root, f"{rep}_{verify}")
                ckpt = Checkpointer(workdir, keep=1)
                ckpt.verify = verify
                t0 = time.perf_counter()
                ckpt.save(1, state, {"next_index": 0}, {"model": args.model})
                ckpt.wait()
                times.setdefault(("save", verify), []).append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                restored, _ = ckpt.restore(1, like=state)
                jax.block_until_ready(restored)
                times.setdefault(("restore", verify), []).append(time.perf_counter() - t0)
                ckpt.close()
                shutil.rmtree(workdir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'':8} {'without (s)':>12} {'with (s)':>10} {'ratio':>7}   (median of {args.repeats})")
    for op in ("save", "restore"):
        off = statistics.median(times[(op, False)])
        on = statistics.median(times[(op, True)])
        print(f"{op:8} {off:12.2f} {on:10.2f} {on / off:7.2f}")


if __name__ == "__main__":
    main()
