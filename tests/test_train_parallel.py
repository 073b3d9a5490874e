"""Data parallelism: 8 devices, and two JAX processes, train exactly like one device.

The step is one `jit` over a 'data' mesh of every device of every process, with BatchNorm
statistics and the loss over the global batch, so the loss curve and the final parameters must
match the single-device reference run up to float reduction order.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests import train_support as support

pytestmark = pytest.mark.slow  # Training runs on 8 devices and in two processes.

RTOL, ATOL = 2e-4, 2e-5

EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import jax
    assert jax.device_count() == 8, jax.devices()
    from csr_jax.train import ConfigError, train_and_evaluate
    from tests.train_support import load_config

    config_path, workdir = Path(sys.argv[1]), sys.argv[2]
    bad = load_config(config_path)
    bad.batch_size = 12
    try:
        train_and_evaluate(bad, workdir + '_bad_batch')
    except ConfigError as e:
        print('BATCH_ERROR:', e)
    summary = train_and_evaluate(load_config(config_path), workdir)
    print('DEVICES:', summary['num_devices'])
""")


def _assert_same_training(workdir: Path, reference: Path) -> None:
    ref_losses, losses = support.train_losses(reference), support.train_losses(workdir)
    assert sorted(losses) == list(range(1, support.NUM_STEPS + 1))
    np.testing.assert_allclose(
        [losses[s] for s in sorted(losses)],
        [ref_losses[s] for s in sorted(losses)],
        rtol=RTOL,
        atol=ATOL,
    )
    ref, got = support.final_arrays(reference), support.final_arrays(workdir)
    assert int(got["step"]) == int(ref["step"]) == support.NUM_STEPS
    support.assert_trees_close(got["params"], ref["params"], RTOL, ATOL)
    support.assert_trees_close(got["batch_stats"], ref["batch_stats"], RTOL, ATOL)


def test_eight_devices_match_one_device(root, reference, tmp_path):
    config = support.write_tiny_config(root / "reference")
    env = support.subprocess_env(root, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = support.run_cli([str(config), str(tmp_path / "run")], env, script=EIGHT_DEVICE_SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEVICES: 8" in proc.stdout
    error = [l for l in proc.stdout.splitlines() if l.startswith("BATCH_ERROR:")]
    assert error and "batch_size=12" in error[0] and "divisible by the 8 devices" in error[0]
    assert "e.g. --config.batch_size=8 or 16" in error[0]
    _assert_same_training(tmp_path / "run", reference)


def test_two_processes_match_one_process(root, reference, tmp_path):
    """Two CLI processes (2 CPU devices each) joined by jax.distributed over localhost."""
    config = support.write_tiny_config(root / "reference")
    workdir = tmp_path / "run"
    port = support.free_port()
    env = support.subprocess_env(root, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.train",
                f"--config={config}",
                f"--workdir={workdir}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=support.REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    summary_out = outputs[0][0]
    assert "processes       2" in summary_out and "devices         4" in summary_out
    assert "eval accuracy" not in outputs[1][0]  # Only process 0 reports.
    _assert_same_training(workdir, reference)
