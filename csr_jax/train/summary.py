"""`<workdir>/summary.json` and the result table printed at the end of a run.

The summary is the run's one-line answer (accuracy, size, speed, where it ran) for people and
for the report tooling; the per-step history is in metrics.jsonl.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath

from csr_jax.report import SUMMARY_FIELDS, SUMMARY_FILE, csr_name  # One definition, JAX-free.


def environment() -> dict[str, Any]:
    """Where the run happened: JAX version and the devices of the mesh."""
    return {
        "jax_version": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
    }


def read_summary(workdir: str) -> dict[str, Any] | None:
    """summary.json of the workdir, or None if absent or unreadable."""
    path = epath.Path(workdir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None


def keep_training_figures(
    summary: dict[str, Any], previous: dict[str, Any] | None
) -> dict[str, Any]:
    """`summary` with the figures a re-evaluation cannot produce taken from `previous`.

    Rerunning a finished run trains no step, so it has no train loss, throughput or compile time
    of its own; the previous summary's values stay (re-evaluation may add fields, never null
    them).
    """
    if not previous:
        return summary
    merged = dict(summary)
    for key, value in previous.items():
        if merged.get(key) is None and value is not None:
            merged[key] = value
    return merged


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
    """Writes summary.json (process 0 only; the workdir is shared)."""
    if jax.process_index() == 0:
        (epath.Path(workdir) / SUMMARY_FILE).write_text(
            json.dumps(summary, indent=2, sort_keys=True)
        )


def format_table(summary: dict[str, Any]) -> str:
    """A two-column text table of the headline numbers."""
    rows = []
    for key, (label, spec) in SUMMARY_FIELDS.items():
        value = summary.get(key)
        if value is None and key != "csr":
            continue
        rows.append((label, csr_name(value) if key == "csr" else format(value, spec)))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule] + lines + [rule])
