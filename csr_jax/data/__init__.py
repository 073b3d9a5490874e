"""Input pipelines: digits (default), Fashion-MNIST from IDX files, synthetic, and tfds datasets.

The contract the training loop relies on (docs/ARCHITECTURE.md, "Data")::

    info = get_info(name, data_dir=None, image_size=None)        # DatasetInfo
    it = make_train_iterator(name, global_batch_size=..., seed=...)  # infinite, checkpointable
    for batch in make_eval_iterator(name, global_batch_size=...):    # one masked pass
        ...

Datasets (``list_datasets()``): ``digits`` (scikit-learn, 16x16x1), ``fashion_mnist`` (IDX files,
32x32x1), ``synthetic`` (32x32x3) and ``synthetic_imagenet`` (224x224x3) need no TensorFlow and
never import tensorflow_datasets; ``cifar10``, ``cifar100`` (32x32x3) and ``imagenet2012``
(224x224x3) read tfds array_record files (``python -m experiments.prepare_data <name>``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from csr_jax.data.info import DatasetInfo, DatasetNotFoundError

if TYPE_CHECKING:  # At run time these load on first use: the pipeline needs grain.
    from csr_jax.data.pipeline import (
        EvalIterator,
        TrainIterator,
        get_info,
        make_eval_iterator,
        make_train_iterator,
    )
    from csr_jax.data.registry import list_datasets

# Loaded on first access, so `from csr_jax.data.info import DatasetInfo` (and this package) work
# without grain installed; only building an iterator needs it.
_LAZY = {
    "EvalIterator": "csr_jax.data.pipeline",
    "TrainIterator": "csr_jax.data.pipeline",
    "get_info": "csr_jax.data.pipeline",
    "make_eval_iterator": "csr_jax.data.pipeline",
    "make_train_iterator": "csr_jax.data.pipeline",
    "list_datasets": "csr_jax.data.registry",
}


def __getattr__(name: str) -> Any:
    """Imports the module behind ``name`` on first access and caches the result."""
    if name not in _LAZY:
        raise AttributeError(f"module 'csr_jax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "EvalIterator",
    "TrainIterator",
    "get_info",
    "list_datasets",
    "make_eval_iterator",
    "make_train_iterator",
]
