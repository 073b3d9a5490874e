"""scikit-learn's 8x8 handwritten digits: the zero-setup default dataset.

1,797 real images (10 classes) ship inside scikit-learn, so this works on any machine with no
download and no TensorFlow. The split is fixed: a stratified 1,437 / 360 train / test split
with a constant seed (so every run, on every machine, evaluates on the same 360 images).

Images are upsampled once, at load time, from 8x8 to ``image_size`` (default 16) with bilinear
interpolation (``augment.resize_matrix``): 8x8 is too small for a conv net with two stride-2
stages, and bilinear rather than nearest gives the network smooth strokes instead of 2x2 blocks
that would make the first 3x3 convolutions see mostly flat patches. Pixels are stored in
``[0, 1]`` (the raw 0..16 intensities divided by 16).
"""

from __future__ import annotations

import functools

import numpy as np

from csr_jax.data import augment

__all__ = ["NUM_TRAIN", "NUM_TEST", "SPLIT_SEED", "DEFAULT_SIZE", "load_digits"]

NUM_TEST = 360
NUM_TRAIN = 1797 - NUM_TEST
SPLIT_SEED = 0
DEFAULT_SIZE = 16


@functools.lru_cache(maxsize=None)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The raw 8x8 images in [0, 1] and labels, split (train indices, test indices)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED
    )
    return images, labels, np.sort(train_idx), np.sort(test_idx)


@functools.lru_cache(maxsize=4)
def load_digits(image_size: int = DEFAULT_SIZE) -> dict[str, np.ndarray]:
    """Returns ``train_images, train_labels, test_images, test_labels`` (images ``(N, s, s, 1)``).

    Cached per ``image_size``: the arrays are small (1,797 x 16 x 16 floats is 1.8 MB), and the
    training loop calls the loader again for every evaluation.
    """
    if image_size < 8:
        raise ValueError(f"digits image_size must be >= 8 (the native 8x8), got {image_size}")
    images, labels, train_idx, test_idx = _split()
    resized = augment.resize_batch(images[..., None], image_size)
    out = {
        "train_images": resized[train_idx],
        "train_labels": labels[train_idx],
        "test_images": resized[test_idx],
        "test_labels": labels[test_idx],
    }
    for array in out.values():
        array.setflags(write=False)
    return out
