"""Errors the training loop raises for problems a user can fix.

Every one of them derives from `UserError` and carries a message that says what went wrong *and*
what to do, so that the command line prints it in a line or two without a traceback and exits
with `exit_code` (see `experiments/train.py`). Anything else is a bug and keeps its traceback:
the command line catches `UserError`, never every `ValueError`.
"""


class UserError(Exception):
    """A problem with the command, the config or the workdir that the user can fix."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """The experiment config is invalid (unknown field, bad value, batch size vs devices...)."""

    exit_code = 2


class IncompatibleWorkdirError(UserError, ValueError):
    """The workdir holds a run of a different experiment; resuming it would mix two runs."""

    exit_code = 2


class WorkdirLockedError(UserError, RuntimeError):
    """Another live process owns the workdir; a second writer would corrupt both runs."""


class WorkdirWriteError(UserError, OSError):
    """The workdir cannot be written (read-only, full, a file, no permission)."""


class NoValidCheckpointError(UserError, RuntimeError):
    """The workdir has checkpoints but none of them passes verification."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss, the gradients or the updated state became NaN/Inf; the run stops before saving."""
