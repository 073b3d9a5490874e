"""Preemption and resumption: SIGTERM mid-run, rerun the same command, same final parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from csr_jax.train import IncompatibleWorkdirError, train_and_evaluate
from tests import train_support as support

pytestmark = pytest.mark.slow  # Training runs interrupted and resumed.

KILL_AT = 6  # SIGTERM arrives while batch 6 of 8 is being read.

# `python -m experiments.train ARGS`, except that the data iterator sends this process SIGTERM
# when batch KILL_AT is requested: a real signal at a known step.
SIGTERM_DRIVER = support.train_driver(KILL_AT, "os.kill(os.getpid(), signal.SIGTERM)")


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigterm_saves_and_the_same_command_resumes_to_the_same_parameters(
    root, reference, tmp_path
):
    workdir = tmp_path / "run"
    args = [f"--config={support.write_tiny_config(root / 'reference')}", f"--workdir={workdir}"]
    env = support.subprocess_env(root)

    first = support.run_cli(args, env, script=SIGTERM_DRIVER)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (
        f"Preempted (SIGTERM): saved a checkpoint at step {KILL_AT}/{support.NUM_STEPS}"
        in first.stdout
    )
    assert "Traceback" not in first.stderr
    assert _steps(workdir) == [4, KILL_AT]
    assert not (workdir / "summary.json").exists()

    second = support.run_cli(args, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming from the checkpoint at step {KILL_AT}" in second.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == support.NUM_STEPS and summary["resumed_from_step"] == KILL_AT
    assert summary["steps_this_run"] == support.NUM_STEPS - KILL_AT

    ref, got = support.final_arrays(reference), support.final_arrays(workdir)
    support.assert_trees_close(got["params"], ref["params"], rtol=1e-6, atol=1e-7)
    support.assert_trees_close(got["batch_stats"], ref["batch_stats"], rtol=1e-6, atol=1e-7)
    support.assert_trees_close(got["opt_state"], ref["opt_state"], rtol=1e-6, atol=1e-7)
    losses, ref_losses = support.train_losses(workdir), support.train_losses(reference)
    assert sorted(losses) == list(range(1, support.NUM_STEPS + 1))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 9)], [ref_losses[s] for s in range(1, 9)], rtol=1e-6
    )
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["eval_accuracy"] == pytest.approx(ref_summary["eval_accuracy"], abs=1e-9)


def test_rerunning_a_finished_run_only_evaluates_it(root, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = support.final_arrays(workdir)
    summary = train_and_evaluate(
        support.load_config(root / "reference" / "tiny_config.py"), str(workdir)
    )
    assert summary["steps_this_run"] == 0 and summary["step"] == support.NUM_STEPS
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["eval_accuracy"] == pytest.approx(ref_summary["eval_accuracy"], abs=1e-9)
    support.assert_trees_close(support.final_arrays(workdir)["params"], before["params"], 0, 0)


def _snapshot(workdir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in workdir.rglob("*")
        if p.is_file()
    }


def test_incompatible_workdir_is_refused_and_left_untouched(root, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = _snapshot(workdir)
    config = support.load_config(root / "reference" / "tiny_config.py")
    config.model = "resnet32"
    config.csr = "t4"
    with pytest.raises(IncompatibleWorkdirError) as e:
        train_and_evaluate(config, str(workdir))
    msg = str(e.value)
    assert "model: saved 'resnet20', now 'resnet32'" in msg
    assert "csr: saved 't2', now 't4'" in msg
    assert "dataset" not in msg.split("Differing fields:")[1]
    assert _snapshot(workdir) == before
