"""Synthetic images and labels: no files, for benchmarks and tests.

Example ``i`` is pool image ``i % POOL_SIZE`` with that image's label, the pool being
``POOL_SIZE`` uniformly random uint8 images drawn once from a fixed seed. So reading a batch is
one gather (cheap enough not to slow a GPU benchmark), every example is a fixed function of its
index (eval coverage and determinism can be checked like for real data), and images and labels
are consistent, so a network can fit them: a smoke test can watch the loss fall.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["POOL_SIZE", "SyntheticSource"]

POOL_SIZE = 256
_POOL_SEED = 20230103


@functools.lru_cache(maxsize=4)
def _pool(image_size: int, channels: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_POOL_SEED)
    images = rng.integers(
        0, 256, size=(POOL_SIZE, image_size, image_size, channels), dtype=np.uint8
    )
    labels = rng.integers(0, num_classes, size=POOL_SIZE).astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class SyntheticSource:
    """``length`` virtual examples of shape ``(image_size, image_size, channels)``."""

    def __init__(self, length: int, image_size: int, channels: int, num_classes: int):
        if image_size < 1:
            raise ValueError(f"synthetic image_size must be positive, got {image_size}")
        self._length = length
        self._images, self._labels = _pool(image_size, channels, num_classes)

    def __len__(self) -> int:
        return self._length

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots = np.asarray(indices, dtype=np.int64) % POOL_SIZE
        return self._images[slots], self._labels[slots]
