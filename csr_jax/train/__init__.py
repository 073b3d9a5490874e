"""Training: state, optimizer, jitted steps over a data-parallel mesh, checkpoints, the loop.

`train_and_evaluate(config, workdir)` is the entry point; the other names are the pieces it is
built from, exported for notebooks, benchmarks and tests.
"""

from csr_jax.train.checkpoint import IDENTITY_FIELDS, Checkpointer, check_compatible
from csr_jax.train.distributed import initialize_distributed
from csr_jax.train.errors import (ConfigError, IncompatibleWorkdirError, NonFiniteLossError,
                                  NoValidCheckpointError, UserError, WorkdirLockedError,
                                  WorkdirWriteError)
from csr_jax.train.evaluation import evaluate
from csr_jax.train.loop import train_and_evaluate
from csr_jax.train.mesh import (batch_sharding, check_batch_size, global_batch, make_data_mesh,
                                replicated_sharding)
from csr_jax.train.optim import make_optimizer, make_schedule, total_steps, weight_decay_mask
from csr_jax.train.state import TrainState, count_params, create_train_state
from csr_jax.train.steps import cross_entropy, make_eval_step, make_train_step
from csr_jax.train.validate import validate_config
from csr_jax.train.workdir import WorkdirLock

__all__ = [
    'IDENTITY_FIELDS', 'Checkpointer', 'ConfigError', 'IncompatibleWorkdirError',
    'NoValidCheckpointError', 'NonFiniteLossError', 'TrainState', 'UserError',
    'WorkdirLock', 'WorkdirLockedError', 'WorkdirWriteError', 'batch_sharding', 'check_batch_size', 'check_compatible',
    'count_params', 'create_train_state', 'cross_entropy', 'evaluate', 'global_batch',
    'initialize_distributed', 'make_data_mesh', 'make_eval_step', 'make_optimizer',
    'make_schedule', 'make_train_step', 'replicated_sharding', 'total_steps',
    'train_and_evaluate', 'validate_config', 'weight_decay_mask',
]
