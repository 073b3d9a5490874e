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

from csr_jax.data.info import DatasetInfo, DatasetNotFoundError
from csr_jax.data.pipeline import (
    EvalIterator,
    TrainIterator,
    get_info,
    make_eval_iterator,
    make_train_iterator,
)
from csr_jax.data.registry import list_datasets

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
