"""What a dataset looks like to the training loop, and the error for one that is not there.

Kept free of heavy imports: the training loop imports this module on every machine, including
those that have only jax, flax, optax, orbax-checkpoint and grain.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DatasetInfo", "DatasetNotFoundError", "prepare_command"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts the training loop needs before it sees a batch.

    Attributes:
      name: the dataset name as passed to ``get_info``.
      num_classes: number of label values; labels are ``0 .. num_classes - 1``.
      image_shape: ``(H, W, C)`` of every batch element after preprocessing (NHWC without N).
      num_train: examples in the training split (an epoch is ``num_train // global_batch_size``
        steps, since train batches drop the remainder of each epoch).
      num_eval: examples in the evaluation split; the eval iterator yields each exactly once.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_eval: int


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the loader looked.

    The message always says what to run (or install) to make them exist, because the usual cause
    is a dataset that was never prepared on this machine, not a bug.
    """


def prepare_command(name: str) -> str:
    """The command that prepares ``name`` once on a machine with network access."""
    return f"python -m experiments.prepare_data {name}"
