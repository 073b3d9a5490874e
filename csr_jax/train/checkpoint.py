"""Checkpoints: the train state, the data iterators' positions and the config, saved together.

Orbax's `CheckpointManager` writes each step to a temporary directory and renames it when
complete, so a save interrupted by a crash or preemption never replaces the previous checkpoint.
Saves are asynchronous (training continues while files are written); `wait()` must run before
the process exits, otherwise the last save may be lost.

Every checkpoint also records a CRC-32 of every array and of the data-iterator state (item
'checksums', see checksums.py), computed from the values being saved. `restore_latest` verifies
them: a checkpoint that fails verification or cannot be read is moved aside to
`<workdir>/checkpoints_rejected/` (never deleted) with a warning, and the newest checkpoint that
verifies is used. Only when none verifies does it stop, listing what it found, moving nothing.

A workdir belongs to one experiment: resuming is automatic, but a config that disagrees on what
is being trained (model, CSR policy, dataset, ...) is refused instead of silently mixing runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from csr_jax.train import checksums as checksums_lib
from csr_jax.train.errors import IncompatibleWorkdirError, NoValidCheckpointError
from csr_jax.train.state import TrainState, abstract_train_state
from csr_jax.train.workdir import read_config

# Fields that define *what* is trained; a workdir refuses a config that changes any of them.
IDENTITY_FIELDS = (
    "dataset",
    "num_classes",
    "image_shape",
    "model",
    "model_overrides",
    "csr",
    "optimizer",
    "batch_size",
    "seed",
)
REJECTED_DIR = "checkpoints_rejected"


def _jsonable(value: Any) -> Any:
    """JSON round trip, so saved and current values compare equal (tuples become lists...)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of a config record (see `config_record` in loop.py)."""
    return {k: _jsonable(record.get(k)) for k in IDENTITY_FIELDS}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], workdir: str) -> None:
    """Raises IncompatibleWorkdirError naming every identity field that differs."""
    old, new = run_identity(saved), run_identity(current)
    diffs = [f"{k}: saved {old[k]!r}, now {new[k]!r}" for k in IDENTITY_FIELDS if old[k] != new[k]]
    if diffs:
        raise IncompatibleWorkdirError(
            f"The workdir {workdir} holds a different experiment; refusing to resume or overwrite "
            "it. Differing fields: "
            + "; ".join(diffs)
            + ". Use a new --workdir, or restore the original values of these fields to resume."
        )


def _gather_json_states(state: Any) -> list[Any]:
    """Every process's JSON-serialisable iterator state, in process order (collective)."""
    if jax.process_count() == 1:
        return [state]
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    lengths = np.asarray(lengths).reshape(-1)
    return [
        json.loads(gathered[i, : lengths[i]].tobytes().decode()) for i in range(jax.process_count())
    ]


class Checkpointer:
    """`<workdir>/checkpoints`: items 'state' (arrays), 'data' and 'config' (JSON)."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.workdir = workdir
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        root = workdir if "://" in workdir else os.path.abspath(workdir)
        self.manager = ocp.CheckpointManager(
            epath.Path(root) / "checkpoints",
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "checksums": ocp.JsonCheckpointHandler(),
            },
        )
        self.verify = True  # False: save and restore without checksums (benchmarks only).

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def saved_config(self) -> dict[str, Any] | None:
        """`<workdir>/config.json`, else the config of the newest checkpoint that reads, else None."""
        config = read_config(self.workdir)
        if config is not None:
            return config
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.manager.restore(
                    step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
                )["config"]
            except Exception as e:  # pylint: disable=broad-except
                logging.warning(
                    "The config of checkpoint %d cannot be read (%s).", step, _reason(e)
                )
        return None

    def save(
        self, step: int, state: TrainState, data_state: Any, config_record: dict[str, Any]
    ) -> None:
        """Starts an asynchronous save of `step` (collective: every process must call it)."""
        data_states = {
            "process_count": jax.process_count(),
            "states": _gather_json_states(data_state),
        }
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(data_states),
            "config": ocp.args.JsonSave(_jsonable(config_record)),
        }
        if self.verify:
            # Computed from the values being saved, before the asynchronous write starts.
            items["checksums"] = ocp.args.JsonSave(checksums_lib.record(state, data_states))
        self.manager.save(step, force=True, args=ocp.args.Composite(**items))

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, Any | None]:
        """The state saved at `step` (laid out like `like`) and this process's iterator state.

        Verifies the checksums when the checkpoint has them (ChecksumMismatch if not equal). The
        iterator state is None when the checkpoint was written by a different number of processes:
        each process's position refers to its own shard, so it cannot be reassigned.
        """
        items = {
            "state": ocp.args.StandardRestore(abstract_train_state(like)),
            "data": ocp.args.JsonRestore(),
        }
        has_sums = self.verify and (self._step_dir(step) / "checksums").exists()
        if has_sums:
            items["checksums"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        data = restored["data"] or {}
        if has_sums:
            checksums_lib.verify(restored["state"], data, restored["checksums"])
        elif self.verify:
            logging.warning(
                "Checkpoint %d in %s has no checksums (written by an older version): "
                "restored without verification.",
                step,
                self.workdir,
            )
        states = data.get("states") or []
        if data.get("process_count") != jax.process_count() or len(states) != jax.process_count():
            return restored["state"], None
        return restored["state"], states[jax.process_index()]

    def _step_dir(self, step: int) -> epath.Path:
        return epath.Path(self.manager.directory) / str(step)

    def restore_latest(self, like: TrainState) -> tuple[int | None, TrainState, Any | None]:
        """(step, state, iterator state) of the newest checkpoint that verifies; (None, like, None)
        when there is none. Newer checkpoints that fail are moved aside (warning); if every one
        fails, raises NoValidCheckpointError listing them and moves nothing.

        Collective: every process verifies what it read, and a checkpoint counts as good only if it
        verified on all of them.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        for step in steps:
            reason = None
            try:
                state, data_state = self.restore(step, like)
            except Exception as e:  # pylint: disable=broad-except
                # Unreadable (truncated or missing file, damaged metadata) or a checksum mismatch.
                reason = _reason(e)
            if not _agree(reason is None):
                failed.append((step, reason or "failed verification on another process"))
                continue
            for bad_step, bad_reason in failed:
                self._reject(bad_step, bad_reason)
            if failed:
                self.manager.reload()
            return step, state, data_state
        if failed:
            found = "; ".join(f"step {s}: {r}" for s, r in failed)
            raise NoValidCheckpointError(
                f"None of the {len(failed)} checkpoints in {self.manager.directory} verifies ({found}). "
                "Nothing was moved or deleted. Start over with a new --workdir, or move the "
                "checkpoints directory away to restart this one from step 0."
            )
        return None, like, None

    def _reject(self, step: int, reason: str) -> None:
        """Moves checkpoint `step` to `<workdir>/checkpoints_rejected/` with a REASON.txt."""
        if jax.process_index() == 0:
            target_root = epath.Path(self.workdir) / REJECTED_DIR
            target_root.mkdir(parents=True, exist_ok=True)
            target = target_root / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
            self._step_dir(step).rename(target)
            (target / "REASON.txt").write_text(reason + "\n")
            logging.warning(
                "Checkpoint %d in %s failed verification (%s); moved it to %s (not "
                "deleted) and resuming from an older one.",
                step,
                self.workdir,
                reason,
                target,
            )
        _barrier(f"reject_{step}")

    def restore_arrays(self, step: int | None = None) -> dict[str, Any]:
        """The saved state as a plain dict ('params', 'batch_stats', 'opt_state', 'step') on this
        process's first device, whatever mesh wrote it: for inspection, evaluation and reports."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.workdir}/checkpoints.")
        metadata = self.manager.item_metadata(step)["state"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return jax.device_get(restored["state"])

    def rejected(self) -> list[str]:
        """Names of the checkpoints moved aside so far (under `<workdir>/checkpoints_rejected/`)."""
        root = epath.Path(self.workdir) / REJECTED_DIR
        return sorted(p.name for p in root.iterdir()) if root.exists() else []

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _reason(error: BaseException) -> str:
    """A one-line description of why a checkpoint could not be used."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _agree(ok: bool) -> bool:
    """True iff `ok` on every process (collective in a multi-process job)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(np.asarray([1 if ok else 0], np.int32))
    return bool(np.all(np.asarray(flags)))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        multihost_utils.sync_global_devices(name)
