"""The device mesh and how batches and state are laid out on it.

Data parallelism over *all* devices of *all* processes: one mesh axis, 'data'. Batches are split
along it (`P('data')`), the train state is replicated (`P()`). Because one `jax.jit` step sees
the global batch, BatchNorm statistics and the loss are computed over the global batch exactly
as on a single device; XLA inserts the cross-device reductions.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from csr_jax.train.errors import ConfigError

DATA_AXIS = "data"


def make_data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the 'data' axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (the train state)."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Refuses a global batch that cannot be split evenly over devices and processes."""
    num_devices = mesh.devices.size
    num_processes = jax.process_count()
    if global_batch_size <= 0:
        raise ConfigError(f"config.{what} must be positive, got {global_batch_size}.")
    if global_batch_size % num_devices:
        lower = global_batch_size // num_devices * num_devices
        raise ConfigError(
            f"config.{what}={global_batch_size} (the global batch) is not divisible by the "
            f"{num_devices} devices of the data mesh. Use a multiple of {num_devices}, e.g. "
            f"--config.{what}={max(lower, num_devices)} or {lower + num_devices}."
        )
    if global_batch_size % num_processes:
        raise ConfigError(
            f"config.{what}={global_batch_size} is not divisible by the {num_processes} processes."
        )


def global_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local rows into global arrays sharded over 'data'.

    Every process passes its own `global_batch_size // process_count` rows; the result is one
    logical array of the global batch, of which each device holds its slice.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
