"""Whole-network A/B of csr_jax's CPU fast paths: the depthwise module at an earlier git revision,
BatchNorm without its fused backward (or with x - mean shared in it), CSRConv's widening 1x1
layers without their composed second step, its steps joined by a stack or its hidden update
stored -- against the working tree, in ONE process, timed alternately.

Why: a change to ``csr_jax/depthwise.py`` moves the train step of every network with depthwise
convs, and CPU timings drift by 10% between runs minutes apart; only an interleaved comparison
(before, after, before, after, ...) on the same compiled-step harness as ``model_bench`` gives a
ratio worth recording. The earlier revision's ``_taps`` (read with ``git show``) is swapped in
while the "before" step is traced; with ``--flax-batchnorm-before`` the "before" step's
BatchNorm layers run ``nn.BatchNorm``'s autodiff instead of ``FusedBatchNorm``'s backward; with
``--csr-stepwise-r2-before`` its widening 1x1 CSRConv layers compute the second step's hidden
term as ``V h_1`` (the GPU/TPU form) instead of ``(U V) x_1``; with ``--bn-shared-center-before`` the fused
BatchNorm backward's ``sum(g * (x - mean))`` shares ``x - mean`` with its other uses (no
optimization barrier, so XLA:CPU stores it); with ``--csr-stack-before`` CSRConv joins its steps
with a stack on a new axis + reshape instead of one concatenate; with
``--csr-stored-update-before`` its hidden update is not recomputed in the backward pass (autodiff
stores ``relu(a + r)``); with ``--whole-batch-conv-grad-before`` its k x k convs take XLA's
kernel gradient over the whole batch instead of summing it over chunks; with
``--xla-depthwise-before`` / ``--xla-batch-norm-before`` its depthwise convs / fused BatchNorm
layers run the pure-XLA CPU form instead of the native kernels (``csr_jax.native``); with
``--xla-pointwise-csr-before`` its widening 1x1 CSRConv layers run the XLA form instead of the
native layer (``csr_jax.pointwise_native``). Everything else is the working tree's.

Run:  python -m benchmarks.depthwise_ab --before e5bace2 [--cases mbv2c effb0 mbv2-b] [--variants ordinary csr]
      python -m benchmarks.depthwise_ab --flax-batchnorm-before [--csr-stepwise-r2-before] [--cases ...]
      python -m benchmarks.depthwise_ab --bn-shared-center-before --csr-stack-before --csr-stored-update-before
      python -m benchmarks.depthwise_ab --xla-depthwise-before --xla-batch-norm-before --cases mbv2c
      python -m benchmarks.depthwise_ab --xla-pointwise-csr-before --cases mbv2c --variants csr
"""

from __future__ import annotations

import argparse
import contextlib
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
import jax.numpy as jnp

from benchmarks import model_bench
from csr_jax import csr_conv, depthwise, pointwise_native
from csr_jax.models import batch_norm
from csr_jax.models.batch_norm import FusedBatchNorm


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


def _stacked_steps(hs):
    """The earlier join of CSRConv's steps: a stack on a new axis, then a reshape."""
    y = jnp.stack(hs, axis=-2)
    return y.reshape(*y.shape[:-2], -1)


def _before(
    rev: str | None,
    flax_batchnorm: bool,
    csr_stepwise_r2: bool = False,
    *,
    bn_shared_center: bool = False,
    csr_stack: bool = False,
    csr_stored_update: bool = False,
    whole_batch_conv_grad: bool = False,
    xla_depthwise: bool = False,
    xla_batch_norm: bool = False,
    xla_pointwise_csr: bool = False,
):
    """A context manager factory under which the 'before' step is traced."""
    old = load_module_at(rev) if rev is not None else None

    def before_taps(x, kernel, strides, pads):
        return old._taps(x, kernel, strides, [tuple(p) for p in pads])

    # (owner, attribute, the 'before' value) for every switch that is on.
    swaps = [
        (owner, name, value)
        for on, owner, name, value in (
            (old is not None, depthwise, "_taps", before_taps),
            (flax_batchnorm, FusedBatchNorm, "_fusable", lambda self, x, mask: False),
            # Only CSRConv's own choice; the depthwise convs keep theirs.
            (csr_stepwise_r2, csr_conv, "_composes_r_2", lambda spec, depthwise: False),
            (bn_shared_center, batch_norm, "_unshared", lambda v: v),
            (csr_stack, csr_conv, "_join_steps", _stacked_steps),
            # The update without jax.checkpoint: autodiff stores relu(a + r).
            (csr_stored_update, csr_conv, "_update", csr_conv._update_formula),
            (whole_batch_conv_grad, depthwise, "_chunked_grad_conv", depthwise._xla_conv),
            # The pure-XLA CPU depthwise form (shifted taps) instead of the native kernels.
            (xla_depthwise, depthwise, "_native_fits", lambda *args: False),
            # The XLA fused BatchNorm instead of the native kernels.
            (xla_batch_norm, batch_norm, "_native_fits", lambda *args: False),
            # The XLA form of the widening 1x1 CSR layers instead of the native layer.
            (xla_pointwise_csr, pointwise_native, "applies", lambda **config: False),
        )
        if on
    ]

    @contextlib.contextmanager
    def before():
        after = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
        for owner, name, value in swaps:
            setattr(owner, name, value)
        # JAX caches traces of custom_vjp backward passes by function; without clearing, a step
        # traced after the other could reuse the other's backward (the BatchNorm toggle would).
        jax.clear_caches()
        try:
            yield
        finally:
            jax.clear_caches()
            for owner, name, value in after:
                setattr(owner, name, value)

    return before


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", default=None, help="git revision of the 'before' depthwise code"
    )
    parser.add_argument(
        "--flax-batchnorm-before",
        action="store_true",
        help="the 'before' step's BatchNorm is nn.BatchNorm's autodiff (no fused backward)",
    )
    parser.add_argument(
        "--csr-stepwise-r2-before",
        action="store_true",
        help="the 'before' step's widening 1x1 CSRConv layers compute r_2 = V h_1 step by step",
    )
    parser.add_argument(
        "--bn-shared-center-before",
        action="store_true",
        help="the 'before' step's BatchNorm backward shares x - mean (no optimization barrier)",
    )
    parser.add_argument(
        "--csr-stack-before",
        action="store_true",
        help="the 'before' step's CSRConv joins its steps with a stack + reshape",
    )
    parser.add_argument(
        "--csr-stored-update-before",
        action="store_true",
        help="the 'before' step's CSRConv stores relu(a + r) instead of recomputing its update",
    )
    parser.add_argument(
        "--whole-batch-conv-grad-before",
        action="store_true",
        help="the 'before' step's k x k convs take XLA's kernel gradient over the whole batch",
    )
    parser.add_argument(
        "--xla-depthwise-before",
        action="store_true",
        help="the 'before' step's depthwise convs are the pure-XLA taps, not the native kernels",
    )
    parser.add_argument(
        "--xla-batch-norm-before",
        action="store_true",
        help="the 'before' step's fused BatchNorm is the XLA form, not the native kernels",
    )
    parser.add_argument(
        "--xla-pointwise-csr-before",
        action="store_true",
        help="the 'before' step's widening 1x1 CSRConv layers are the XLA form, not the native op",
    )
    parser.add_argument("--preset", choices=sorted(model_bench.PRESETS), default="cpu-dw")
    parser.add_argument("--cases", nargs="*", default=["mbv2c", "effb0", "mbv2-b"])
    parser.add_argument("--variants", nargs="*", default=["ordinary", "csr"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="chained steps per timing")
    args = parser.parse_args(argv)
    toggles = dict(
        bn_shared_center=args.bn_shared_center_before,
        csr_stack=args.csr_stack_before,
        csr_stored_update=args.csr_stored_update_before,
        whole_batch_conv_grad=args.whole_batch_conv_grad_before,
        xla_depthwise=args.xla_depthwise_before,
        xla_batch_norm=args.xla_batch_norm_before,
        xla_pointwise_csr=args.xla_pointwise_csr_before,
    )
    if args.before is None and not (
        args.flax_batchnorm_before or args.csr_stepwise_r2_before or any(toggles.values())
    ):
        parser.error(
            "say what the 'before' step is: --before REV and/or one or more of "
            "--flax-batchnorm-before, --csr-stepwise-r2-before, --bn-shared-center-before, "
            "--csr-stack-before, --csr-stored-update-before, --whole-batch-conv-grad-before, "
            "--xla-depthwise-before, --xla-batch-norm-before, --xla-pointwise-csr-before"
        )
    before_step = _before(
        args.before, args.flax_batchnorm_before, args.csr_stepwise_r2_before, **toggles
    )

    print(
        f"# depthwise_ab  before: depthwise {args.before or 'tree'}, batchnorm "
        f"{'flax' if args.flax_batchnorm_before else 'fused'}"
        f"{' (x - mean shared)' if args.bn_shared_center_before else ''}, csr 1x1 r_2 "
        f"{'step by step' if args.csr_stepwise_r2_before else 'tree'}"
        f"{', csr steps stacked' if args.csr_stack_before else ''}"
        f"{', csr update stored' if args.csr_stored_update_before else ''}"
        f"{', k x k conv grads whole-batch' if args.whole_batch_conv_grad_before else ''}"
        f"{', depthwise pure-XLA taps' if args.xla_depthwise_before else ''}"
        f"{', batchnorm XLA (not native)' if args.xla_batch_norm_before else ''}"
        f"{', widening 1x1 CSR XLA (not native)' if args.xla_pointwise_csr_before else ''}"
        f"  jax {jax.__version__}  host {platform.node()}  "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    print(
        "| case | variant | before img/s | after img/s | after / before | planned MiB before -> after |"
    )
    print("|---|---|---|---|---|---|")
    for case in model_bench.select_cases(args.preset, args.cases):
        for variant in args.variants:
            built = {}
            for name, context in (("before", before_step), ("after", contextlib.nullcontext)):
                with context():
                    built[name] = model_bench.build(case, variant)
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
