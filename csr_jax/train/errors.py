"""Errors the training loop raises for problems a user can fix.

Each carries a message that says what went wrong *and* what to do, so that the command line
can print it without a traceback (see `experiments/train.py`).
"""


class ConfigError(ValueError):
  """The experiment config is invalid (e.g. batch size not divisible by the device count)."""


class IncompatibleWorkdirError(ValueError):
  """The workdir holds a run of a different experiment; resuming it would mix two runs."""


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf; the run stops before saving a broken state."""
