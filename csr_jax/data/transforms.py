"""Per-dataset batch transforms: raw batch from a source -> ``{'image', 'label'}`` float32 NHWC.

Two recipes cover every dataset:

* ``SmallImages`` (CIFAR, Fashion-MNIST, digits, synthetic): bring the batch to the target size
  (zero-pad or bilinear resize), then for training the reference's augmentation -- random crop
  after padding by ``crop_pad`` pixels and a random horizontal flip -- then mean/std
  normalisation. The crop pad scales with the resolution (``size // 8``: 4 at 32x32 as in the
  reference, 2 for 16x16 digits), so the shift is the same fraction of the image everywhere.
* ``ImageNetImages``: Inception-style random resized crop + flip for training, resize-256 /
  centre-crop-224 for eval (sizes scale with ``size``), ImageNet mean/std.

Random draws are made for the whole global batch and each process keeps the rows at its
``BatchLayout.positions``, so an example's augmentation does not depend on the process count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from csr_jax.data import augment

__all__ = ["BatchLayout", "SmallImages", "ImageNetImages"]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Which rows of each global batch this process holds.

    Process ``p`` of ``P`` holds rows ``p, p + P, p + 2P, ...`` of every global batch (its
    ``positions``), matching the ``process_index::process_count`` sharding of the example order.
    """

    global_batch_size: int
    process_index: int
    process_count: int

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @functools.cached_property
    def positions(self) -> np.ndarray:
        return np.arange(self.local_batch_size) * self.process_count + self.process_index


@dataclasses.dataclass(frozen=True)
class SmallImages:
    """Same-size images: geometry, optional crop/flip augmentation, normalisation.

    Attributes:
      size: output height and width.
      pad_to_size: True: zero-pad the (smaller) source images centred to ``size``; False: resize
        them bilinearly (a no-op when they already have that size).
      crop_pad: pixels of zero padding for the random crop (0 disables the crop).
      flip: whether training mirrors half of the images left-right.
      mean, std: per-channel statistics on [0, 1] pixels.
      pixel_max: the source's pixel value for white (255 for uint8, 1 for [0, 1] floats).
    """

    size: int
    pad_to_size: bool
    crop_pad: int
    flip: bool
    mean: Sequence[float]
    std: Sequence[float]
    pixel_max: float

    def _geometry(self, images: np.ndarray, extra: int) -> np.ndarray:
        if self.pad_to_size:
            return augment.pad_batch_to(images, self.size, extra)
        images = augment.resize_batch(images, self.size) if images.shape[1] != self.size else images
        return augment.pad_batch_to(images, self.size, extra) if extra else images

    def train(
        self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, layout: BatchLayout
    ) -> dict[str, np.ndarray]:
        if self.crop_pad == 0 and not self.flip:
            return self.eval(images, labels)
        padded = self._geometry(images, self.crop_pad)
        oy, ox, flips = augment.draw_crop_flip(
            rng, layout.global_batch_size, 2 * self.crop_pad, self.flip
        )
        pos = layout.positions
        images = augment.crop_flip(padded, self.size, oy[pos], ox[pos], flips[pos])
        return {
            "image": augment.normalize(images, self.mean, self.std, self.pixel_max),
            "label": labels.astype(np.int32),
        }

    def eval(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        images = self._geometry(images, 0)
        return {
            "image": augment.normalize(images, self.mean, self.std, self.pixel_max),
            "label": labels.astype(np.int32),
        }


@dataclasses.dataclass(frozen=True)
class ImageNetImages:
    """Variable-size RGB uint8 images -> ``size x size`` crops (224 by default)."""

    size: int = 224

    @property
    def eval_resize(self) -> int:
        """Shorter side before the eval centre crop: 256 for 224, same ratio otherwise."""
        return int(round(self.size * 256 / 224))

    def train(
        self,
        images: Sequence[np.ndarray],
        labels: np.ndarray,
        rng: np.random.Generator,
        layout: BatchLayout,
    ) -> dict[str, np.ndarray]:
        draws = rng.random((layout.global_batch_size, augment.INCEPTION_DRAWS + 1))
        draws = draws[layout.positions]
        out = np.empty((len(images), self.size, self.size, 3), np.uint8)
        for i, image in enumerate(images):
            image = _rgb(image)
            box = augment.inception_crop_box(draws[i, :-1], image.shape[0], image.shape[1])
            out[i] = augment.resized_crop(image, box, self.size, flip=bool(draws[i, -1] < 0.5))
        return {
            "image": augment.normalize(out, augment.IMAGENET_MEAN, augment.IMAGENET_STD, 255),
            "label": np.asarray(labels, np.int32),
        }

    def eval(self, images: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
        out = np.empty((len(images), self.size, self.size, 3), np.uint8)
        for i, image in enumerate(images):
            out[i] = augment.resize_center_crop(_rgb(image), self.eval_resize, self.size)
        return {
            "image": augment.normalize(out, augment.IMAGENET_MEAN, augment.IMAGENET_STD, 255),
            "label": np.asarray(labels, np.int32),
        }


def _rgb(image: np.ndarray) -> np.ndarray:
    """tfds decodes ImageNet to (H, W, 3); a (H, W, 1) grayscale image is repeated to RGB."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
