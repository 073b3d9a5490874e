"""Training: state, optimizer, jitted steps over a data-parallel mesh, checkpoints, the loop.

`train_and_evaluate(config, workdir)` is the entry point; the other names are the pieces it is
built from, exported for notebooks, benchmarks and tests.

Names load on first use (PEP 562 `__getattr__`), so `from csr_jax.train import state, steps`
(the train step alone, as benchmarks/model_bench.py needs it) imports jax, flax and optax only,
not the loop's orbax, grain and ml_collections.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_LAZY = {
    "IDENTITY_FIELDS": "checkpoint",
    "Checkpointer": "checkpoint",
    "check_compatible": "checkpoint",
    "initialize_distributed": "distributed",
    "ConfigError": "errors",
    "IncompatibleWorkdirError": "errors",
    "NonFiniteLossError": "errors",
    "NoValidCheckpointError": "errors",
    "UserError": "errors",
    "WorkdirLockedError": "errors",
    "WorkdirWriteError": "errors",
    "evaluate": "evaluation",
    "train_and_evaluate": "loop",
    "batch_sharding": "mesh",
    "check_batch_size": "mesh",
    "global_batch": "mesh",
    "make_data_mesh": "mesh",
    "replicated_sharding": "mesh",
    "make_optimizer": "optim",
    "make_schedule": "optim",
    "total_steps": "optim",
    "weight_decay_mask": "optim",
    "TrainState": "state",
    "count_params": "state",
    "create_train_state": "state",
    "cross_entropy": "steps",
    "make_eval_step": "steps",
    "make_train_step": "steps",
    "validate_config": "validate",
    "WorkdirLock": "workdir",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Imports the module behind `name` on first access and caches the value."""
    if name not in _LAZY:
        raise AttributeError(f"module 'csr_jax.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"csr_jax.train.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
