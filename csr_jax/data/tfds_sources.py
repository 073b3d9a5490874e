"""tensorflow-datasets splits as random-access sources (array_record), TF-free at training time.

``tfds.data_source`` reads the array_record files that ``prepare_data`` wrote and decodes each
record with NumPy/PIL, so training needs tensorflow-datasets but not TensorFlow. This module is
the only place that imports ``tensorflow_datasets``, and only inside functions, so that the
digits / Fashion-MNIST-IDX / synthetic paths never load it.

Under ``tfds.testing.mock_data`` (tfds 4.9.10) ``tfds.data_source`` works without TensorFlow:
the mock replaces ``DatasetBuilder.as_data_source`` with an ``ArrayRecordDataSource`` whose
records come from tfds's random example generator (``num_examples`` per split, images of the
feature's shape). Its single-record ``__getitem__`` works, but its batched ``__getitems__`` is
broken in that version (the mock binds ``_getitems`` without ``self`` and raises TypeError), so
``TfdsSource.read`` reads record by record; with real array_record files that costs little,
since reads run in grain's worker threads and decoding dominates anyway.

``open_mock_split`` uses that mock on purpose (``config.mock_data``): a split of random examples
with the real split's length and the builder's real features (CIFAR 32x32x3, Fashion-MNIST
28x28x1, ImageNet of random sizes between 5 and 49 pixels a side), so every config's input
pipeline, augmentation and masked eval run on a machine that has never prepared the data. The
mock is active only while the split is opened; the returned source keeps working after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

from csr_jax.data.info import DatasetNotFoundError, prepare_command

__all__ = ["MOCK_SPLIT_SIZES", "TfdsSource", "open_mock_split", "open_split"]

# The real splits' lengths, so that a mock run has the real run's epochs and schedule.
MOCK_SPLIT_SIZES: dict[tuple[str, str], int] = {
    ("cifar10", "train"): 50_000,
    ("cifar10", "test"): 10_000,
    ("cifar100", "train"): 50_000,
    ("cifar100", "test"): 10_000,
    ("fashion_mnist", "train"): 60_000,
    ("fashion_mnist", "test"): 10_000,
    ("imagenet2012", "train"): 1_281_167,
    ("imagenet2012", "validation"): 50_000,
}


class TfdsSource:
    """One split of a tfds dataset: ``len(source)`` and ``source.read(indices)``.

    ``read`` returns ``(images, labels)``: images stacked into one uint8 array when all have the
    same shape (CIFAR, Fashion-MNIST), else a list of ``(H, W, 3)`` arrays (ImageNet).
    """

    def __init__(self, data_source: Any, name: str, split: str):
        self._source = data_source
        self.name = name
        self.split = split
        self._len = len(data_source)

    def __len__(self) -> int:
        return self._len

    def read(self, indices: np.ndarray) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
        records = [self._source[int(i)] for i in indices]
        images = [np.asarray(r["image"]) for r in records]
        labels = np.asarray([r["label"] for r in records], dtype=np.int32)
        if images and all(im.shape == images[0].shape for im in images):
            return np.stack(images), labels
        return images, labels


def _not_prepared(name: str, data_dir: str | None, detail: str) -> DatasetNotFoundError:
    where = (
        data_dir
        if data_dir is not None
        else "tfds's default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    extra = (
        " ImageNet cannot be downloaded automatically: see `python -m "
        "experiments.prepare_data imagenet2012 --help` for where to put the archives."
    )
    return DatasetNotFoundError(
        f"tensorflow-datasets '{name}' is not prepared (as array_record) in {where}: {detail}. "
        f"Prepare it once with `{prepare_command(name)}"
        f"{' --data_dir ' + data_dir if data_dir is not None else ''}` "
        f"(needs TensorFlow: pip install -e '.[prepare]'), or pass the data_dir that holds it."
        + (extra if name == "imagenet2012" else "")
    )


def open_split(name: str, split: str, data_dir: str | os.PathLike | None) -> TfdsSource:
    """Opens ``name``/``split`` through ``tfds.data_source`` (no download, no TensorFlow).

    A failure is turned into ``DatasetNotFoundError`` when the builder is not prepared in
    ``data_dir`` or was prepared in a format without random access (tfrecord); anything else
    (a corrupt file, an unknown split) propagates unchanged.
    """
    import tensorflow_datasets as tfds  # Lazy: only tfds-backed datasets pay for (and need) it.

    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types here; diagnose from the builder instead.
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
            file_format = getattr(builder.info, "file_format", None)
        except Exception:  # The builder itself cannot be made: report the original failure.
            raise e
        if not prepared:
            raise _not_prepared(name, data_dir, "no prepared data found") from e
        if file_format is not None and "array_record" not in str(file_format).lower():
            raise _not_prepared(
                name,
                data_dir,
                f"it was prepared as {file_format}, which has no random access; prepare it again "
                "into another data_dir (prepare_data writes array_record)",
            ) from e
        raise
    return TfdsSource(source, name, split)


class _DropMissingMetadataWarning(logging.Filter):
    """The mock builds builders from code, and tfds warns that it found no metadata files."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _quiet_mock_warnings():
    logger, drop = logging.getLogger("absl"), _DropMissingMetadataWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def open_mock_split(name: str, split: str) -> TfdsSource:
    """``name``/``split`` as random examples from ``tfds.testing.mock_data`` (no files read).

    The split has its real length (``MOCK_SPLIT_SIZES``); example ``i`` is the same on every call
    and every machine (tfds seeds its generator with the index).
    """
    try:
        num_examples = MOCK_SPLIT_SIZES[(name, split)]
    except KeyError:
        raise ValueError(
            f"no mock data for tfds split {name!r}/{split!r}; mock splits: "
            f"{sorted(MOCK_SPLIT_SIZES)}"
        ) from None
    import tensorflow_datasets as tfds  # Lazy, as in open_split.

    with (
        _quiet_mock_warnings(),
        tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE),
    ):
        source = tfds.data_source(name, split=split, download=False)
    return TfdsSource(source, name, split)
