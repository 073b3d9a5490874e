r"""Train a CSR (or ordinary) network: `python -m experiments.train [--config FILE[:runlocal]]`.

With no arguments it trains the default (experiments/configs/digits.py: a CSR ResNet-20 on
scikit-learn's digits, about a minute on a 2-core CPU) in a fresh temporary workdir.

  python -m experiments.train --config experiments/configs/cifar10_resnet56.py \
      --workdir /ckpt/resnet56 --config.csr=t4
  python -m experiments.train --config experiments/configs/cifar10_resnet56.py:runlocal

Rerunning with the same --workdir resumes from its newest verified checkpoint. A user's mistake
(an unknown or bad config field, a missing config file, a workdir in use or not writable, a
diverged run) prints one or two lines saying what to do, without a traceback (--traceback shows
it): exit code 2 for a bad command or config, 1 for a run that could not go on. Multi-process launches
(one process per host) pass --coordinator_address/--num_processes/--process_id (or the
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID environment variables); Cloud TPU
VM pods, SLURM and Open MPI are detected automatically.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py")

# New attributes are accepted at parse time so that a misspelt field reaches the config
# validation, which names the nearest valid field instead of ml_collections' traceback.
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    default=_DEFAULT_CONFIG,
    help_string='Config file (experiments/configs/*.py), optionally with ":runlocal".',
    lock_config=False,
    accept_new_attributes=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Checkpoints, metrics and summary go here; an existing run there is resumed. "
    "Default: a fresh temporary directory (printed).",
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize(): auto = when a multi-process launch is detected.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process GPU/CPU launches."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of user errors.")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message says what to do: printed without a traceback.

    Only dedicated types: a ValueError from deep inside a library is a bug and keeps its traceback.
    """
    from csr_jax.data import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
    from csr_jax.data.fashion_mnist import IDXFormatError  # pylint: disable=g-import-not-at-top
    from csr_jax.train.errors import UserError  # pylint: disable=g-import-not-at-top

    return (UserError, DatasetNotFoundError, IDXFormatError)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if code != 2:  # A run that could not go on: the traceback may help someone.
        print("(rerun with --traceback for the full traceback)", file=sys.stderr, flush=True)
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with command-line mistakes reported in one line and exit code 2.

    The config file is loaded here (not lazily at first use), so a missing or broken config file
    is reported before anything runs.
    """
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        if "--traceback" in argv:
            raise
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        # A config file's own error arrives as a whole traceback: its last line says what is wrong.
        _fail(f"{lines[-1] if len(lines) > 1 else str(e)} (--helpshort lists the flags.)", 2)
    try:
        hasattr(_CONFIG.value, "lock")  # A config that failed to load raises on first use.
    except OSError as e:  # ml_collections reports a config file it cannot load as an OSError.
        if "--traceback" in argv:
            raise
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = lines[-1] if lines else str(e)
        _fail(
            f"cannot load the config file ({detail}). Pass --config=PATH to an existing file, "
            "e.g. --config=experiments/configs/digits.py.",
            2,
        )
    return rest


def _is_disposable(workdir: str) -> bool:
    """True when a temporary workdir holds nothing worth keeping (no checkpoint, no metrics)."""
    if not os.path.isdir(workdir):
        return False
    ckpts = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
        return False
    metrics = os.path.join(workdir, "metrics.jsonl")
    return not (os.path.exists(metrics) and os.path.getsize(metrics) > 0)


def _run() -> dict:
    """Joins a multi-process job if launched as one, picks the workdir, trains."""
    # Must precede any JAX computation: it decides which devices exist.
    from csr_jax.train.distributed import initialize_distributed  # pylint: disable=g-import-not-at-top

    initialize_distributed(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    import jax  # pylint: disable=g-import-not-at-top

    from csr_jax.train import (
        train_and_evaluate,  # pylint: disable=g-import-not-at-top
        validate_config,  # pylint: disable=g-import-not-at-top
    )
    from csr_jax.train.run_config import csr_setting  # pylint: disable=g-import-not-at-top

    validate_config(_CONFIG.value, csr_setting(_CONFIG.value))  # Before any workdir exists.
    workdir = _WORKDIR.value
    if workdir is None:
        if jax.process_count() > 1:
            raise ValueError(
                "A multi-process run needs --workdir on storage every process can reach "
                "(all processes write one checkpoint together)."
            )
        workdir = tempfile.mkdtemp(prefix="csr_jax_")
        temporary = True
    else:
        temporary = False
    if jax.process_index() == 0:
        print(f"workdir: {workdir}", flush=True)
    logging.info("config:\n%s", _CONFIG.value)
    try:
        return train_and_evaluate(_CONFIG.value, workdir)
    except BaseException:
        if temporary and _is_disposable(workdir):  # A failed start leaves no empty temp dir.
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every step of every save at INFO; the progress bar and table say enough.
        logging.set_verbosity(logging.WARNING)
    try:
        summary = _run()
    except _user_errors() as e:
        if _TRACEBACK.value:
            raise
        _fail(str(e), getattr(e, "exit_code", 1))
    import jax  # pylint: disable=g-import-not-at-top

    if jax.process_index() == 0:
        if summary.get("preempted"):
            print(summary["message"], flush=True)
        else:
            print(f"summary: {os.path.join(summary['workdir'], 'summary.json')}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
