"""Joining a multi-process JAX job (`jax.distributed.initialize`) before any JAX computation.

One process runs per host (TPU VM worker, GPU node, or a test's CPU subprocess). All of them
must call `jax.distributed.initialize` before touching devices, so that `jax.devices()` lists the
devices of every process and one `jit` step can span them all.
"""

from __future__ import annotations

import glob
import logging
import os

import jax

_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _on_cloud_tpu_vm() -> bool:
    """True on a Cloud TPU VM, where JAX can discover the pod's other workers by itself."""
    if any(
        k in os.environ
        for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "MEGASCALE_COORDINATOR_ADDRESS")
    ):
        return True
    return bool(glob.glob("/dev/accel*")) or os.path.exists("/dev/vfio/0")


def _launched_by_cluster_manager() -> bool:
    """True under SLURM or Open MPI with more than one task (JAX reads their env itself)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def initialize_distributed(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when this process is part of a multi-process job.

    Args:
      mode: 'auto' joins a job when one is described (explicit arguments or the
        `JAX_COORDINATOR_ADDRESS`/`JAX_NUM_PROCESSES`/`JAX_PROCESS_ID` environment variables), on a
        Cloud TPU VM (JAX auto-detects the pod) and under SLURM/Open MPI with several tasks;
        'on' always calls it (auto-detection fills what is missing); 'off' never does.
      coordinator_address: 'host:port' of process 0 (GPU clusters, tests).
      num_processes: total number of processes.
      process_id: this process's index in [0, num_processes).

    Returns:
      True if the distributed runtime is (now) initialized.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}.")
    if jax.distributed.is_initialized():
        return True
    if mode == "off":
        return False
    coordinator_address = coordinator_address or os.environ.get(_ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(_ENV_NUM_PROCESSES):
        num_processes = int(os.environ[_ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(_ENV_PROCESS_ID):
        process_id = int(os.environ[_ENV_PROCESS_ID])
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        if not (_on_cloud_tpu_vm() or _launched_by_cluster_manager()):
            raise ValueError(
                "A multi-process launch needs all of --coordinator_address, --num_processes and "
                f"--process_id (or ${_ENV_COORDINATOR}, ${_ENV_NUM_PROCESSES}, ${_ENV_PROCESS_ID}); "
                f"got coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}."
            )
    wanted = (
        mode == "on"
        or any(v is not None for v in explicit)
        or _on_cloud_tpu_vm()
        or _launched_by_cluster_manager()
    )
    if not wanted:
        return False
    logging.info(
        "jax.distributed.initialize(coordinator_address=%s, num_processes=%s, process_id=%s)",
        coordinator_address,
        num_processes,
        process_id,
    )
    only_guessed = mode == "auto" and all(v is None for v in explicit)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    except ValueError as e:
        if not only_guessed:
            raise
        # A single TPU machine outside Cloud TPU's metadata service (e.g. a notebook VM) looks
        # like a TPU VM but describes no pod: run as one process.
        logging.warning("No multi-process job detected (%s); running as a single process.", e)
        return False
    return True
