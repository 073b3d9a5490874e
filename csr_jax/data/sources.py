"""In-memory random-access sources: whole splits held as NumPy arrays.

A source is anything with ``len(source)`` and ``source.read(indices) -> (images, labels)``. The
pipeline reads one *batch* of indices at a time, so for in-memory data a read is a single
fancy-indexing gather instead of one Python call per example.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ArraySource"]


class ArraySource:
    """A split held in memory: ``images`` ``(N, H, W, C)`` and integer ``labels`` ``(N,)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        return self.images[indices], self.labels[indices]
