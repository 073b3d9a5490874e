"""`<workdir>/summary.json` and the result table printed at the end of a run.

The summary is the run's one-line answer (accuracy, size, speed, where it ran) for people and
for the report tooling; the per-step history is in metrics.jsonl.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath

SUMMARY_FILE = 'summary.json'

_TABLE_ROWS = (
    ('model', 'model', '{}'), ('csr', 'CSR', '{}'), ('dataset', 'dataset', '{}'),
    ('num_params', 'params', '{:,}'), ('step', 'steps', '{:,}'),
    ('eval_accuracy', 'eval accuracy', '{:.4f}'), ('eval_top5_accuracy', 'eval top-5', '{:.4f}'),
    ('eval_loss', 'eval loss', '{:.4f}'), ('train_loss', 'train loss', '{:.4f}'),
    ('images_per_sec', 'train images/s', '{:,.1f}'), ('compile_time_s', 'first step (s)', '{:.1f}'),
    ('wall_time_s', 'wall time (s)', '{:.1f}'),
    ('device_kind', 'device', '{}'), ('num_devices', 'devices', '{}'),
    ('num_processes', 'processes', '{}'),
)


def environment() -> dict[str, Any]:
  """Where the run happened: JAX version and the devices of the mesh."""
  return {
      'jax_version': jax.__version__,
      'device_kind': jax.devices()[0].device_kind,
      'platform': jax.devices()[0].platform,
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
  }


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
  """Writes summary.json (process 0 only; the workdir is shared)."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))


def format_table(summary: dict[str, Any]) -> str:
  """A two-column text table of the headline numbers."""
  rows = []
  for key, label, fmt in _TABLE_ROWS:
    value = summary.get(key)
    if value is None and key != 'csr':
      continue
    rows.append((label, 'none' if value is None else fmt.format(value)))
  width = max(len(label) for label, _ in rows)
  lines = [f'{label.ljust(width)}  {value}' for label, value in rows]
  rule = '-' * max(len(line) for line in lines)
  return '\n'.join([rule] + lines + [rule])
