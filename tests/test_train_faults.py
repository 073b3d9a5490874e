"""Fault injection on the real training loop: damaged checkpoints, a second run on a workdir in
use, divergence, torn metrics, a failing disk, a rerun of a finished run.

Every case starts from (a copy of) the shared tiny reference run (8 steps, checkpoints at 4 and
8) and asserts on outcomes: which files exist, what the exception or exit code is, and that the
final parameters and losses equal those of the uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

from csr_jax.train import (
    NonFiniteLossError,
    NoValidCheckpointError,
    WorkdirLock,
    WorkdirLockedError,
    WorkdirWriteError,
    train_and_evaluate,
)
from tests import train_support as support

N = support.NUM_STEPS


def _config(root: Path, **overrides):
    config = support.load_config(support.write_tiny_config(root / "reference"))
    for key, value in overrides.items():
        config[key] = value
    return config


def _copy_reference(reference: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    return workdir


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _array_data_file(step_dir: Path) -> Path:
    """The OCDBT data file the state's arrays are read from (the merged `state/d/` one)."""
    files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_byte(step_dir: Path) -> None:
    """One flipped byte in the array data: unreadable (tensorstore reports DATA_LOSS)."""
    path = _array_data_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_iterator_digit(step_dir: Path) -> None:
    """One changed digit in the data-iterator state: still valid JSON, silently wrong."""
    path = step_dir / "data" / "metadata"
    text = path.read_text()
    i = max(i for i, ch in enumerate(text) if ch.isdigit() and ch != "9")
    path.write_text(text[:i] + str(int(text[i]) + 1) + text[i + 1 :])


def _arrays_of_another_step(step_dir: Path) -> None:
    """Readable arrays with the wrong values (those of checkpoint 4): silently wrong."""
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "4" / "state", step_dir / "state")


def _truncate(step_dir: Path) -> None:
    path = _array_data_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _delete_state(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "state")


def _assert_ends_like_reference(workdir: Path, reference: Path) -> None:
    ref, got = support.final_arrays(reference), support.final_arrays(workdir)
    for key in ("params", "batch_stats", "opt_state"):
        support.assert_trees_close(got[key], ref[key], rtol=1e-6, atol=1e-7)
    losses, ref_losses = support.train_losses(workdir), support.train_losses(reference)
    assert sorted(losses) == list(range(1, N + 1))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, N + 1)], [ref_losses[s] for s in range(1, N + 1)], rtol=1e-6
    )


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints: moved aside, resumed from the newest one that verifies, same end.


@pytest.mark.parametrize(
    "damage",
    [
        _flip_byte,
        _arrays_of_another_step,
        _flip_iterator_digit,
        pytest.param(_truncate, marks=pytest.mark.slow),
        pytest.param(_delete_state, marks=pytest.mark.slow),
    ],
    ids=[
        "flipped_byte",
        "wrong_arrays",
        "flipped_iterator_digit",
        "truncated_file",
        "deleted_item",
    ],
)
def test_damaged_latest_checkpoint_falls_back_and_ends_like_an_uninterrupted_run(
    root, reference, tmp_path, damage
):
    workdir = _copy_reference(reference, tmp_path)
    (workdir / "summary.json").unlink()
    damage(workdir / "checkpoints" / str(N))

    summary = train_and_evaluate(_config(root), str(workdir))

    assert summary["resumed_from_step"] == 4 and summary["steps_this_run"] == N - 4
    rejected = list((workdir / "checkpoints_rejected").iterdir())
    assert [p.name.split("-")[0] for p in rejected] == [str(N)]
    assert (rejected[0] / "state").exists() or damage is _delete_state  # Moved, not deleted.
    reason = (rejected[0] / "REASON.txt").read_text()
    if damage in (_arrays_of_another_step, _flip_iterator_digit):
        assert "ChecksumMismatch" in reason
    assert _steps(workdir) == [4, N]
    _assert_ends_like_reference(workdir, reference)


def test_no_verifying_checkpoint_stops_listing_them_and_moves_nothing(root, reference, tmp_path):
    workdir = _copy_reference(reference, tmp_path)
    _flip_byte(workdir / "checkpoints" / "4")
    _truncate(workdir / "checkpoints" / str(N))
    with pytest.raises(NoValidCheckpointError) as e:
        train_and_evaluate(_config(root), str(workdir))
    assert "step 4" in str(e.value) and f"step {N}" in str(e.value)
    assert _steps(workdir) == [4, N]
    assert not (workdir / "checkpoints_rejected").exists()


# ----------------------------------------------------------------------------------------------
# One owner per workdir.

# `python -m experiments.train ARGS`, pausing before batch 6 until the file argv[1] exists.
PAUSING_DRIVER = support.train_driver(
    6,
    """
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.1)
    """,
    setup="go, ready = sys.argv.pop(1), sys.argv.pop(1)",
)


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_is_refused_and_the_first_is_unharmed(
    root, reference, tmp_path
):
    import subprocess
    import sys
    import time

    workdir, go, ready = tmp_path / "run", tmp_path / "go", tmp_path / "ready"
    args = [f"--config={support.write_tiny_config(root / 'reference')}", f"--workdir={workdir}"]
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSING_DRIVER, str(go), str(ready)] + args,
        cwd=support.REPO,
        env=support.subprocess_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not ready.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run never reached step 6"
            time.sleep(0.2)
        # The first run's own asynchronous save of checkpoint 4 may still be in flight: wait
        # for it, so that the snapshot sees only what a second run could change.
        while not (workdir / "checkpoints" / "4").exists() or list(
            (workdir / "checkpoints").glob("*orbax-checkpoint-tmp*")
        ):
            assert time.time() < deadline, "checkpoint 4 was never committed"
            time.sleep(0.2)
        before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
        with pytest.raises(WorkdirLockedError) as e:
            train_and_evaluate(_config(root), str(workdir))
        assert f"pid {first.pid}" in str(e.value) and "--workdir" in str(e.value)
        assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == before
    finally:
        go.touch()
        out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
    _assert_ends_like_reference(workdir, reference)


def test_lock_is_exclusive_and_released_with_its_owner(tmp_path):
    """In-process: a held lock refuses a second holder; releasing it lets the next one in."""
    holder = WorkdirLock(str(tmp_path))
    holder.acquire()
    with pytest.raises(WorkdirLockedError, match="pid"):
        WorkdirLock(str(tmp_path)).acquire()
    holder.release()
    with WorkdirLock(str(tmp_path)):
        pass


# ----------------------------------------------------------------------------------------------
# Divergence: no non-finite state on disk; the same workdir then trains at a sane rate.


def test_diverging_run_saves_no_nonfinite_state_and_a_rerun_resumes_from_a_finite_one(
    root, reference, tmp_path
):
    workdir = tmp_path / "run"
    config = _config(root, learning_rate=1e6, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError) as e:
        train_and_evaluate(config, str(workdir))
    msg = str(e.value)
    bad_step = int(msg.split(" at step ")[1].split(" ")[0])
    steps = _steps(workdir) if (workdir / "checkpoints").exists() else []
    assert steps == list(range(1, bad_step))[-3:]  # Every step before the bad one, kept 3.
    # The learning rate of the bad step itself (cosine schedule), not of a later one.
    from csr_jax.train import make_schedule

    steps_per_epoch = 1437 // config.batch_size
    lr = float(make_schedule(config, steps_per_epoch, N)(bad_step - 1))
    assert f"learning rate {lr:.4g})" in msg
    if steps:
        assert f"last good checkpoint (step {steps[-1]})" in msg
    for step in steps:
        ckpt = support.final_arrays_at(workdir, step)
        for leaf in jax.tree.leaves(ckpt):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64))), step

    # A rerun at a sane rate resumes from the last good checkpoint: it verifies (nothing is
    # rejected) and the changed rate is recorded. Two steps near lr 1e6 leave finite weights whose
    # gradient norm overflows at any rate, so this rerun stops again, at the same step, with
    # the same true "last good checkpoint"; it never turns a finite checkpoint into a bad one.
    config_sane = _config(root, learning_rate=0.001)
    try:
        summary = train_and_evaluate(config_sane, str(workdir))
        assert summary["step"] == N and np.isfinite(summary["train_loss"])
    except NonFiniteLossError as again:
        assert f"at step {bad_step} " in str(again) and "learning rate 0.0" in str(again)
        if steps:
            assert f"last good checkpoint (step {steps[-1]})" in str(again)
    assert not (workdir / "checkpoints_rejected").exists()
    for step in _steps(workdir):
        for leaf in jax.tree.leaves(support.final_arrays_at(workdir, step)):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64))), step
    history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"]["learning_rate"] == [1e6, 0.001]
    assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.001


# ----------------------------------------------------------------------------------------------
# Nothing lost on rerun or crash.


def test_rerunning_a_finished_run_keeps_its_training_figures(root, reference, tmp_path):
    workdir = _copy_reference(reference, tmp_path)
    before = json.loads((workdir / "summary.json").read_text())
    summary = train_and_evaluate(_config(root), str(workdir))
    after = json.loads((workdir / "summary.json").read_text())
    assert summary["steps_this_run"] == 0
    for key in ("train_loss", "images_per_sec", "compile_time_s"):
        assert before[key] is not None and after[key] == before[key], key
    assert after["eval_accuracy"] == pytest.approx(before["eval_accuracy"], abs=1e-9)


def test_torn_metrics_line_after_a_crash_is_repaired_on_resume(root, reference, tmp_path):
    """A crash after step 6 (checkpoint 4 on disk) tore the last line of metrics.jsonl."""
    workdir = _copy_reference(reference, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / str(N))
    (workdir / "summary.json").unlink()
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    upto6 = [l for l in lines if json.loads(l)["step"] <= 6]
    torn = [l for l in lines if json.loads(l)["step"] == 7][0][:25]
    (workdir / "metrics.jsonl").write_text("\n".join(upto6) + "\n" + torn)

    summary = train_and_evaluate(_config(root), str(workdir))

    assert summary["resumed_from_step"] == 4
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [json.loads(l)["step"] for l in lines]
    discarded = (workdir / "metrics.discarded.jsonl").read_text().splitlines()
    assert discarded == [l for l in upto6 if json.loads(l)["step"] > 4] + [torn]
    _assert_ends_like_reference(workdir, reference)


def test_a_write_failure_mid_save_is_one_clear_error_and_keeps_earlier_checkpoints(
    root, reference, tmp_path, monkeypatch
):
    """The disk fills up while checkpoint 8 is written: step 4 stays intact, a rerun finishes."""
    workdir = _copy_reference(reference, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / str(N))
    (workdir / "summary.json").unlink()
    path_type = type(epath.Path(str(workdir)))
    original = path_type.write_text

    def full_disk(self, *args, **kwargs):
        if f"{N}.orbax-checkpoint-tmp" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(path_type, "write_text", full_disk)
    with pytest.raises(WorkdirWriteError) as e:
        train_and_evaluate(_config(root), str(workdir))
    assert "no space left" in str(e.value).lower() and str(workdir) in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(path_type, "write_text", original)
    assert _steps(workdir) == [4]

    summary = train_and_evaluate(_config(root), str(workdir))
    assert summary["resumed_from_step"] == 4 and _steps(workdir) == [4, N]
    _assert_ends_like_reference(workdir, reference)


@pytest.mark.parametrize("layout", ["workdir_is_a_file", "parent_is_a_file"])
def test_a_file_in_the_way_of_the_workdir_is_one_clear_error(root, tmp_path, layout):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    workdir = blocker if layout == "workdir_is_a_file" else blocker / "run"
    with pytest.raises(WorkdirWriteError) as e:
        train_and_evaluate(_config(root), str(workdir))
    assert "use another --workdir" in str(e.value) and str(blocker) in str(e.value)
    assert blocker.read_text() == "not a directory"


def test_a_failed_start_leaves_no_temporary_workdir(root, tmp_path):
    """No --workdir: the run makes a temporary one; if it cannot start, the directory goes."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = support.run_cli(
        ["--config.dataset=cifar10", f"--config.data_dir={tmp_path}/none"],
        support.subprocess_env(root, TMPDIR=str(tmp)),
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "prepare_data cifar10" in proc.stderr and "Traceback" not in proc.stderr
    assert "workdir: " in proc.stdout  # It was made...
    assert not list(tmp.glob("csr_jax_*"))  # ...and removed.
