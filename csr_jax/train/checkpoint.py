"""Checkpoints: the train state, the data iterators' positions and the config, saved together.

Orbax's `CheckpointManager` writes each step to a temporary directory and renames it when
complete, so a save interrupted by a crash or preemption never replaces the previous checkpoint.
Saves are asynchronous (training continues while files are written); `wait()` must run before
the process exits, otherwise the last save may be lost.

A workdir belongs to one experiment: resuming is automatic, but a config that disagrees on what
is being trained (model, CSR policy, dataset, ...) is refused instead of silently mixing runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from csr_jax.train.errors import IncompatibleWorkdirError
from csr_jax.train.state import TrainState, abstract_train_state

# Fields that define *what* is trained; a workdir refuses a config that changes any of them.
IDENTITY_FIELDS = ('dataset', 'num_classes', 'image_shape', 'model', 'model_overrides', 'csr',
                   'optimizer', 'batch_size', 'seed')
CONFIG_FILE = 'config.json'


def _jsonable(value: Any) -> Any:
  """JSON round trip, so saved and current values compare equal (tuples become lists...)."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_identity(record: dict[str, Any]) -> dict[str, Any]:
  """The identity fields of a config record (see `config_record` in loop.py)."""
  return {k: _jsonable(record.get(k)) for k in IDENTITY_FIELDS}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], workdir: str) -> None:
  """Raises IncompatibleWorkdirError naming every identity field that differs."""
  old, new = run_identity(saved), run_identity(current)
  diffs = [f'{k}: saved {old[k]!r}, now {new[k]!r}' for k in IDENTITY_FIELDS if old[k] != new[k]]
  if diffs:
    raise IncompatibleWorkdirError(
        f'The workdir {workdir} holds a different experiment; refusing to resume or overwrite '
        'it. Differing fields: ' + '; '.join(diffs) +
        '. Use a new --workdir, or restore the original values of these fields to resume.')


def _gather_json_states(state: Any) -> list[Any]:
  """Every process's JSON-serialisable iterator state, in process order (collective)."""
  if jax.process_count() == 1:
    return [state]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(state).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  lengths = np.asarray(lengths).reshape(-1)
  return [json.loads(gathered[i, :lengths[i]].tobytes().decode())
          for i in range(jax.process_count())]


class Checkpointer:
  """`<workdir>/checkpoints`: items 'state' (arrays), 'data' and 'config' (JSON)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.workdir = workdir
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    root = workdir if '://' in workdir else os.path.abspath(workdir)
    self.manager = ocp.CheckpointManager(
        epath.Path(root) / 'checkpoints', options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def saved_config(self) -> dict[str, Any] | None:
    """The config record of the latest checkpoint, else of `<workdir>/config.json`, else None."""
    step = self.latest_step()
    if step is not None:
      restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      return restored['config']
    path = epath.Path(self.workdir) / CONFIG_FILE
    if path.exists():
      return json.loads(path.read_text())
    return None

  def write_config(self, config_record: dict[str, Any]) -> None:
    """`<workdir>/config.json`: the run's config for people and for the compatibility check."""
    if jax.process_index() == 0:
      (epath.Path(self.workdir) / CONFIG_FILE).write_text(
          json.dumps(_jsonable(config_record), indent=2, sort_keys=True))

  def save(self, step: int, state: TrainState, data_state: Any,
           config_record: dict[str, Any]) -> None:
    """Starts an asynchronous save of `step` (collective: every process must call it)."""
    data_states = {'process_count': jax.process_count(),
                   'states': _gather_json_states(data_state)}
    self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_states),
        config=ocp.args.JsonSave(_jsonable(config_record))))

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, Any | None]:
    """The state saved at `step` (laid out like `like`) and this process's iterator state.

    The iterator state is None when the checkpoint was written by a different number of
    processes: each process's position refers to its own shard, so it cannot be reassigned.
    """
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_train_state(like)),
        data=ocp.args.JsonRestore()))
    data = restored['data'] or {}
    states = data.get('states') or []
    if data.get('process_count') != jax.process_count() or len(states) != jax.process_count():
      return restored['state'], None
    return restored['state'], states[jax.process_index()]

  def restore_arrays(self, step: int | None = None) -> dict[str, Any]:
    """The saved state as a plain dict ('params', 'batch_stats', 'opt_state', 'step') on this
    process's first device, whatever mesh wrote it: for inspection, evaluation and reports."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.workdir}/checkpoints.')
    metadata = self.manager.item_metadata(step)['state']
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return jax.device_get(restored['state'])

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
