r"""Train a CSR (or ordinary) network: `python -m experiments.train [--config FILE[:runlocal]]`.

With no arguments it trains the default (experiments/configs/digits.py: a CSR ResNet-20 on
scikit-learn's digits, about a minute on a 2-core CPU) in a fresh temporary workdir.

  python -m experiments.train --config experiments/configs/cifar10_resnet56.py \
      --workdir /ckpt/resnet56 --config.csr=t4
  python -m experiments.train --config experiments/configs/cifar10_resnet56.py:runlocal

Rerunning with the same --workdir resumes from its latest checkpoint. Multi-process launches
(one process per host) pass --coordinator_address/--num_processes/--process_id (or the
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID environment variables); Cloud TPU
VM pods, SLURM and Open MPI are detected automatically.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'digits.py')

_CONFIG = config_flags.DEFINE_config_file(
    'config', default=_DEFAULT_CONFIG,
    help_string='Config file (experiments/configs/*.py), optionally with ":runlocal".')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, metrics and summary go here; an existing run there is resumed. '
    'Default: a fresh temporary directory (printed).')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'Call jax.distributed.initialize(): auto = when a multi-process launch is detected.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process GPU/CPU launches.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
_TRACEBACK = flags.DEFINE_bool('traceback', False, 'Show the full traceback of user errors.')


def _user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions whose message says what to do: printed without a traceback."""
  from csr_jax.data import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
  return (ValueError, FileNotFoundError, FloatingPointError, DatasetNotFoundError)


def _run() -> dict:
  """Joins a multi-process job if launched as one, picks the workdir, trains."""
  # Must precede any JAX computation: it decides which devices exist.
  from csr_jax.train.distributed import initialize_distributed  # pylint: disable=g-import-not-at-top
  initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  import jax  # pylint: disable=g-import-not-at-top
  from csr_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  if workdir is None:
    if jax.process_count() > 1:
      raise ValueError('A multi-process run needs --workdir on storage every process can reach '
                       '(all processes write one checkpoint together).')
    workdir = tempfile.mkdtemp(prefix='csr_jax_')
  if jax.process_index() == 0:
    print(f'workdir: {workdir}', flush=True)
  logging.info('config:\n%s', _CONFIG.value)
  return train_and_evaluate(_CONFIG.value, workdir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every step of every save at INFO; the progress bar and table say enough.
    logging.set_verbosity(logging.WARNING)
  try:
    summary = _run()
  except _user_errors() as e:
    if _TRACEBACK.value:
      raise
    print(f'error: {e}', file=sys.stderr, flush=True)
    print('(rerun with --traceback for the full traceback)', file=sys.stderr, flush=True)
    sys.exit(1)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    if summary.get('preempted'):
      print(summary['message'], flush=True)
    else:
      print(f'summary: {os.path.join(summary["workdir"], "summary.json")}', flush=True)


if __name__ == '__main__':
  app.run(main)
