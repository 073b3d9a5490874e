"""Dataset names -> (info, train source, eval source, batch transform).

Each builder imports what only it needs (scikit-learn for digits, tensorflow_datasets for the
tfds datasets), so asking for one dataset never loads another's dependencies. ``data_dir`` is
accepted by every dataset (a config sets it once for all) and ignored by those that need no
files (digits, synthetic).

``mock=True`` (``config.mock_data``) swaps the files of the tfds-backed datasets (cifar10,
cifar100, imagenet2012, and fashion_mnist, whose files may be IDX or tfds) for
``tfds.testing.mock_data`` splits of the real length, and keeps everything after the source (the
transform, hence the augmentation and the eval preprocessing) as for real data. Datasets that need
no files (digits, synthetic) are the same with and without it: they already run anywhere.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Protocol

import numpy as np

from csr_jax.data import augment, digits, fashion_mnist, synthetic
from csr_jax.data.info import DatasetInfo
from csr_jax.data.sources import ArraySource
from csr_jax.data.transforms import ImageNetImages, SmallImages

__all__ = ["Dataset", "build", "list_datasets"]


class Source(Protocol):
    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray): ...


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Everything the pipeline needs for one dataset at one resolution."""

    info: DatasetInfo
    train: Source
    eval: Source
    transform: SmallImages | ImageNetImages


DataDir = str | os.PathLike | None
Builder = Callable[[DataDir, int | None, bool], Dataset]  # (data_dir, image_size, mock).


def _size(name: str, image_size: int | None, default: int, minimum: int = 1) -> int:
    if image_size is None:
        return default
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < minimum
    ):
        raise ValueError(f"{name}: image_size must be an integer >= {minimum}, got {image_size!r}")
    return int(image_size)


def _info(name: str, num_classes: int, size: int, channels: int, train, eval_) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        num_classes=num_classes,
        image_shape=(size, size, channels),
        num_train=len(train),
        num_eval=len(eval_),
    )


def _digits(data_dir: DataDir, image_size: int | None, mock: bool) -> Dataset:
    del data_dir, mock  # Ships with scikit-learn.
    size = _size("digits", image_size, digits.DEFAULT_SIZE, minimum=8)
    arrays = digits.load_digits(size)
    train = ArraySource(arrays["train_images"], arrays["train_labels"])
    eval_ = ArraySource(arrays["test_images"], arrays["test_labels"])
    # The digits' own statistics, measured on the training split at this resolution.
    mean, std = float(train.images.mean()), float(train.images.std())
    # No flip: a mirrored 2, 3, 4, 5, 7 or 9 is not that digit any more (and 6/9 are rotations).
    transform = SmallImages(
        size=size,
        pad_to_size=False,
        crop_pad=size // 8,
        flip=False,
        mean=(mean,),
        std=(std,),
        pixel_max=1.0,
    )
    return Dataset(_info("digits", 10, size, 1, train, eval_), train, eval_, transform)


def _fashion_mnist(data_dir: DataDir, image_size: int | None, mock: bool) -> Dataset:
    size = _size("fashion_mnist", image_size, fashion_mnist.DEFAULT_SIZE)
    kind, where = ("tfds", None) if mock else fashion_mnist.resolve(data_dir)
    if kind == "idx":
        arrays = fashion_mnist.load_idx_dir(where)
        train = ArraySource(arrays["train_images"], arrays["train_labels"])
        eval_ = ArraySource(arrays["test_images"], arrays["test_labels"])
    else:
        train = _tfds_split("fashion_mnist", "train", where, mock)
        eval_ = _tfds_split("fashion_mnist", "test", where, mock)
    transform = SmallImages(
        size=size,
        pad_to_size=size >= fashion_mnist.NATIVE_SIZE,
        crop_pad=size // 8,
        flip=True,
        mean=fashion_mnist.MEAN,
        std=fashion_mnist.STD,
        pixel_max=255.0,
    )
    return Dataset(_info("fashion_mnist", 10, size, 1, train, eval_), train, eval_, transform)


def _tfds_split(name: str, split: str, data_dir: DataDir, mock: bool):
    from csr_jax.data import tfds_sources  # Lazy: imports tensorflow_datasets when called.

    if mock:
        return tfds_sources.open_mock_split(name, split)
    return tfds_sources.open_split(name, split, data_dir)


def _cifar(name: str, num_classes: int) -> Builder:
    def build_cifar(data_dir: DataDir, image_size: int | None, mock: bool) -> Dataset:
        size = _size(name, image_size, 32)
        train = _tfds_split(name, "train", data_dir, mock)
        eval_ = _tfds_split(name, "test", data_dir, mock)
        # The reference normalises CIFAR with ImageNet's mean/std; we follow it.
        transform = SmallImages(
            size=size,
            pad_to_size=False,
            crop_pad=size // 8,
            flip=True,
            mean=augment.IMAGENET_MEAN,
            std=augment.IMAGENET_STD,
            pixel_max=255.0,
        )
        return Dataset(_info(name, num_classes, size, 3, train, eval_), train, eval_, transform)

    return build_cifar


def _imagenet(data_dir: DataDir, image_size: int | None, mock: bool) -> Dataset:
    size = _size("imagenet2012", image_size, 224)
    train = _tfds_split("imagenet2012", "train", data_dir, mock)
    eval_ = _tfds_split("imagenet2012", "validation", data_dir, mock)
    return Dataset(
        _info("imagenet2012", 1000, size, 3, train, eval_), train, eval_, ImageNetImages(size)
    )


def _synthetic(
    name: str, default_size: int, num_classes: int, num_train: int, num_eval: int
) -> Builder:
    def build_synthetic(data_dir: DataDir, image_size: int | None, mock: bool) -> Dataset:
        del data_dir, mock  # Needs no files.
        size = _size(name, image_size, default_size)
        train = synthetic.SyntheticSource(num_train, size, 3, num_classes)
        eval_ = synthetic.SyntheticSource(num_eval, size, 3, num_classes)
        # No augmentation: benchmarks should time the model, not the crop.
        transform = SmallImages(
            size=size,
            pad_to_size=False,
            crop_pad=0,
            flip=False,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            pixel_max=255.0,
        )
        return Dataset(_info(name, num_classes, size, 3, train, eval_), train, eval_, transform)

    return build_synthetic


_BUILDERS: dict[str, Builder] = {
    "cifar10": _cifar("cifar10", 10),
    "cifar100": _cifar("cifar100", 100),
    "digits": _digits,
    "fashion_mnist": _fashion_mnist,
    "imagenet2012": _imagenet,
    # CIFAR-shaped and ImageNet-shaped stand-ins with the real split sizes.
    "synthetic": _synthetic("synthetic", 32, 10, 50_000, 10_000),
    "synthetic_imagenet": _synthetic("synthetic_imagenet", 224, 1000, 1_281_167, 50_000),
}


def list_datasets() -> list[str]:
    """The dataset names ``get_info`` and the iterators accept, sorted."""
    return sorted(_BUILDERS)


def build(
    name: str, data_dir: DataDir = None, image_size: int | None = None, mock: bool = False
) -> Dataset:
    """Builds ``name``; raises ValueError for an unknown name, DatasetNotFoundError if absent.

    ``mock=True``: tfds mock data instead of files for the tfds-backed datasets (module
    docstring); ``data_dir`` is then not read.
    """
    try:
        builder = _BUILDERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(list_datasets())}"
        ) from None
    if not isinstance(mock, (bool, np.bool_)):
        raise ValueError(f"mock must be True or False, got {mock!r}")
    return builder(data_dir, image_size, bool(mock))
