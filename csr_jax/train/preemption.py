"""Stopping cleanly on SIGTERM (preemption), at a step every process agrees on.

Schedulers (Kubernetes, SLURM, preemptible/spot VMs) send SIGTERM some seconds before killing a
job. The loop finishes the step in flight, saves a checkpoint and exits; the next launch resumes.

Single process: a Python SIGTERM handler sets a flag. Multi-process: processes must stop at the
*same* step or the collectives of the next step hang, so JAX's preemption sync manager (started
by `jax.distributed.initialize`, which also owns SIGTERM there) picks the step:
`multihost_utils.reached_preemption_sync_point(step)` turns True on every process together.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax


class PreemptionWatcher:
    """`should_stop(step)` becomes True after SIGTERM; call it once per step on every process."""

    def __init__(self):
        self._requested = False
        self._previous = None
        self._use_jax_sync = jax.distributed.is_initialized()
        if not self._use_jax_sync and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        if not self._requested:
            logging.warning(
                "SIGTERM received: finishing the current step, then saving a checkpoint."
            )
        self._requested = True

    def should_stop(self, step: int) -> bool:
        if self._use_jax_sync:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except (
                RuntimeError
            ):  # Preemption service disabled (jax_enable_preemption_service=False).
                return False
        return self._requested

    def close(self) -> None:
        """Restores the SIGTERM handler that was installed before."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
