"""Fashion-MNIST from its four original IDX files, with no TensorFlow anywhere on this path.

Where the files come from: Debian's ``dataset-fashion-mnist`` package installs them in
``/usr/share/datasets/fashion-mnist/`` (the default ``data_dir`` when it exists); any directory
holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each gzipped or not) works too. If a directory lacks them but holds a
tensorflow-datasets ``fashion_mnist`` prepared as array_record, the tfds source is used instead
(see ``resolve``); only that fallback imports tensorflow_datasets. The split is the original
60,000 train / 10,000 test.

Resolution: 28x28 images are zero-padded (centred, 2 pixels a side) to **32x32** by default.
The CIFAR backbones this project trains were designed for 32x32: the ResNets, DenseNet and
MobileNetV2 downsample 32 -> 16 -> 8, and VGG-16 halves five times to a 1x1 map before its
512 -> classes dense layer, which 28x28 cannot reach (28 -> 14 -> 7 -> 3 -> 1 -> 0). Padding with
zeros (the images' own black background) adds no information and changes no pixel, unlike a
resize; it is also what the widely used LeNet-5 set-up did for MNIST. ``image_size=28`` gives the
native images; sizes above 28 pad, sizes below 28 resize bilinearly.

Normalisation uses Fashion-MNIST's own training-set pixel statistics (``MEAN``, ``STD``, on
[0, 1] pixels of the unpadded images); the tests recompute them from the real files.
"""

from __future__ import annotations

import functools
import glob
import gzip
import os
import struct
import zlib

import numpy as np

from csr_jax.data.info import DatasetNotFoundError, prepare_command

__all__ = [
    "DEFAULT_DIR",
    "IDX_FILES",
    "MEAN",
    "STD",
    "NATIVE_SIZE",
    "DEFAULT_SIZE",
    "IDXFormatError",
    "read_idx",
    "find_idx_files",
    "load_idx_dir",
    "resolve",
]

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MEAN = (0.2860406,)
STD = (0.3530242,)
NATIVE_SIZE = 28
DEFAULT_SIZE = 32
NUM_CLASSES = 10

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file is corrupt, truncated or not the expected kind of IDX file."""


def _corrupt(path: str, what: str) -> IDXFormatError:
    return IDXFormatError(
        f"{path}: {what}. The file is corrupt or not a Fashion-MNIST IDX file; reinstall it "
        f"(apt-get install --reinstall dataset-fashion-mnist) or download the original again."
    )


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (gzipped or not) into an array of its shape.

    The format (LeCun's MNIST page): two zero bytes, a type byte (0x08 = ubyte), a byte with the
    number of dimensions, one big-endian uint32 per dimension, then the data. Gzip is detected
    from the content, not the name. Raises ``IDXFormatError`` on any inconsistency, including a
    data section whose length does not match the header.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(path, f"gzip stream is damaged ({e})") from e
    if len(data) < 4:
        raise _corrupt(path, f"only {len(data)} bytes, shorter than an IDX header")
    zero0, zero1, dtype_code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0:
        raise _corrupt(path, f"bad magic number 0x{data[:4].hex()} (must start with 0x0000)")
    if dtype_code != _UBYTE:
        raise _corrupt(path, f"element type 0x{dtype_code:02x}, expected 0x08 (unsigned byte)")
    if ndim == 0:
        raise _corrupt(path, "header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"header declares {ndim} dimensions but the file ends early")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise _corrupt(
            path, f"header says {dims} ({expected} bytes in all) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_files(directory: str | os.PathLike | None) -> dict[str, str] | None:
    """Paths of the four IDX files in ``directory`` (plain or ``.gz``), or None if any is absent."""
    if directory is None or not os.path.isdir(directory):
        return None
    found = {}
    for key, base in IDX_FILES.items():
        for candidate in (base + ".gz", base):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                found[key] = path
                break
        else:
            return None
    return found


def _check_pair(images: np.ndarray, labels: np.ndarray, split: str, paths: dict[str, str]):
    prefix = "train" if split == "train" else "test"
    img_path, lbl_path = paths[f"{prefix}_images"], paths[f"{prefix}_labels"]
    if images.ndim != 3 or images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
        raise _corrupt(img_path, f"images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise _corrupt(lbl_path, f"labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise _corrupt(lbl_path, f"{len(labels)} labels for {len(images)} images in {img_path}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise _corrupt(lbl_path, f"label {labels.max()} out of range 0..{NUM_CLASSES - 1}")


@functools.lru_cache(maxsize=2)
def _load_cached(
    paths_key: tuple[tuple[str, str], ...], stamp: tuple[float, ...]
) -> dict[str, np.ndarray]:
    del stamp  # Only part of the cache key, so that rewritten files are read again.
    paths = dict(paths_key)
    out = {key: read_idx(path) for key, path in paths.items()}
    _check_pair(out["train_images"], out["train_labels"], "train", paths)
    _check_pair(out["test_images"], out["test_labels"], "test", paths)
    out["train_images"] = out["train_images"][..., None]
    out["test_images"] = out["test_images"][..., None]
    out["train_labels"] = out["train_labels"].astype(np.int32)
    out["test_labels"] = out["test_labels"].astype(np.int32)
    return out


def load_idx_dir(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads ``train_images, train_labels, test_images, test_labels`` (images ``(N, 28, 28, 1)``
    uint8, labels int32) from the IDX files in ``directory``.

    Cached (keyed by the files' paths and modification times): the training loop builds a new
    eval iterator for every evaluation, and decompressing 30 MB each time would be wasted.
    """
    paths = find_idx_files(directory)
    if paths is None:
        raise DatasetNotFoundError(_not_found_message(str(directory)))
    stamp = tuple(os.path.getmtime(p) for p in paths.values())
    return _load_cached(tuple(sorted(paths.items())), stamp)


def _tfds_default_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def _tfds_prepared(directory: str) -> bool:
    """Whether ``directory`` holds a tfds ``fashion_mnist`` (checked by path, importing nothing)."""
    pattern = os.path.join(directory, "fashion_mnist", "**", "dataset_info.json")
    return bool(glob.glob(pattern, recursive=True))


def _not_found_message(where: str) -> str:
    names = ", ".join(f"{base}[.gz]" for base in IDX_FILES.values())
    return (
        f"Fashion-MNIST not found: no IDX files ({names}) and no tensorflow-datasets "
        f"'fashion_mnist' in {where}. Either install the Debian package "
        f"(`apt-get install dataset-fashion-mnist`, which puts the files in {DEFAULT_DIR}/), or "
        f"point `--config.data_dir` at a directory holding the four IDX files, or prepare the "
        f"tfds version with `{prepare_command('fashion_mnist')} [--data_dir DIR]`."
    )


def resolve(data_dir: str | os.PathLike | None) -> tuple[str, str | None]:
    """Where to read Fashion-MNIST from: ``('idx', directory)`` or ``('tfds', tfds_data_dir)``.

    With ``data_dir=None``: the Debian directory if it holds the IDX files, else a tfds
    ``fashion_mnist`` in tfds's default data directory. With a ``data_dir``: IDX files in it,
    else a tfds ``fashion_mnist`` in it. Raises ``DatasetNotFoundError`` naming the fixes.
    """
    if data_dir is None:
        if find_idx_files(DEFAULT_DIR) is not None:
            return "idx", DEFAULT_DIR
        if _tfds_prepared(_tfds_default_dir()):
            return "tfds", None
        raise DatasetNotFoundError(
            _not_found_message(f"{DEFAULT_DIR} (default) or tfds's data dir {_tfds_default_dir()}")
        )
    data_dir = os.fspath(data_dir)
    if find_idx_files(data_dir) is not None:
        return "idx", data_dir
    if _tfds_prepared(data_dir):
        return "tfds", data_dir
    raise DatasetNotFoundError(_not_found_message(data_dir))
