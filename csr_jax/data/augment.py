"""Image preprocessing and augmentation in NumPy (and PIL for ImageNet), no TensorFlow.

Everything here works on a whole batch at once where the images share a size (CIFAR, Fashion-
MNIST, digits): the random crop and the horizontal flip are ONE fancy-indexing gather over the
batch, resizing is two small matrix products, and normalisation is one fused multiply-add. Per-
image Python loops are kept for ImageNet only, whose images all differ in size.

Randomness is always passed in as arrays of draws (offsets, flips, uniforms) rather than drawn
here, so that the caller decides which random numbers an example gets. The pipeline draws them
for the whole *global* batch from one seeded generator and each process keeps its own rows; an
example's augmentation then depends on (seed, step, position in the global batch) only, not on
how many processes share the batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize_matrix",
    "resize_batch",
    "pad_batch_to",
    "draw_crop_flip",
    "crop_flip",
    "normalize",
    "INCEPTION_DRAWS",
    "inception_crop_box",
    "resized_crop",
    "resize_center_crop",
]

#: ImageNet channel statistics on [0, 1] pixels; the reference normalises CIFAR-10 with these too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Bilinear (triangle-filter) resampling weights, shape ``(out_size, in_size)``.

    Pixel centres sit at ``i + 0.5`` (half-pixel convention, as PIL and ``jax.image.resize``).
    When shrinking, the triangle is widened by the scale factor so that every input pixel
    contributes (antialiasing, as PIL does); when enlarging it is ordinary bilinear interpolation
    with edge pixels repeated. Rows sum to one, so a constant image stays constant.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    src = np.arange(in_size) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centres[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Resizes a batch ``(B, H, W, C)`` of square images to ``(B, size, size, C)`` float32."""
    _, h, w, _ = images.shape
    if h == size and w == size:
        return images.astype(np.float32, copy=False)
    rows, cols = resize_matrix(h, size), resize_matrix(w, size)
    return np.einsum("oh,bhwc,pw->bopc", rows, images.astype(np.float32), cols, optimize=True)


def pad_batch_to(images: np.ndarray, size: int, extra: int = 0) -> np.ndarray:
    """Zero-pads ``(B, H, W, C)`` images centred to ``size``, plus ``extra`` pixels on every side.

    Zero is black in pixel space, which is the background of Fashion-MNIST and digits and the
    fill value of the reference's ``RandomCrop(32, padding=4)``.
    """
    _, h, w, _ = images.shape
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = (
        (0, 0),
        (top + extra, size - h - top + extra),
        (left + extra, size - w - left + extra),
        (0, 0),
    )
    if not any(p for axis in pad for p in axis):
        return images
    return np.pad(images, pad)


def draw_crop_flip(
    rng: np.random.Generator, n: int, max_offset: int, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws ``n`` crop offsets in ``[0, max_offset]`` (y and x) and flip decisions."""
    offsets = rng.integers(0, max_offset + 1, size=(2, n))
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    return offsets[0], offsets[1], flips


def crop_flip(
    padded: np.ndarray, size: int, offset_y: np.ndarray, offset_x: np.ndarray, flips: np.ndarray
) -> np.ndarray:
    """Crops ``size x size`` windows at the given offsets and mirrors the flagged ones.

    One gather for the whole batch: row and column index grids per example, with the column
    grid reversed for flipped examples, index the padded batch directly.
    """
    b = padded.shape[0]
    ar = np.arange(size)
    rows = offset_y[:, None] + ar[None, :]
    cols = offset_x[:, None] + np.where(flips[:, None], size - 1 - ar[None, :], ar[None, :])
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float], pixel_max: float
) -> np.ndarray:
    """``(images / pixel_max - mean) / std`` per channel, as one float32 multiply-add."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    scale = 1.0 / (np.float32(pixel_max) * std)
    return images.astype(np.float32) * scale - mean / std


# --- ImageNet (Inception-style) -----------------------------------------------------------------

_ATTEMPTS = 10
#: Uniform draws one inception crop needs: 10 attempts x (area, log-ratio), y, x.
INCEPTION_DRAWS = 2 * _ATTEMPTS + 2


def inception_crop_box(
    u: np.ndarray,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """The random-resized-crop box ``(top, left, h, w)`` from ``INCEPTION_DRAWS`` uniforms.

    The procedure of Szegedy et al. (2015) as torchvision implements it: up to ten tries of an
    area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; the first box that fits
    is placed uniformly; if none fits, the largest centred box with a ratio inside the range.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * k + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[-2] * (height - h + 1)), height - h)
            left = min(int(u[-1] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _pil():
    from PIL import Image  # Pillow is a matplotlib dependency; imported where ImageNet needs it.

    return Image


def resized_crop(
    image: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool
) -> np.ndarray:
    """Crops ``box`` from a ``(H, W, 3)`` uint8 image, resizes to ``size``, optionally mirrors."""
    image_mod = _pil()
    top, left, h, w = box
    pil = image_mod.fromarray(np.ascontiguousarray(image[top : top + h, left : left + w]))
    pil = pil.resize((size, size), image_mod.BILINEAR)
    if flip:
        pil = pil.transpose(image_mod.FLIP_LEFT_RIGHT)
    return np.asarray(pil)


def resize_center_crop(image: np.ndarray, resize: int, size: int) -> np.ndarray:
    """Eval preprocessing: shorter side to ``resize``, then the centred ``size x size`` crop."""
    image_mod = _pil()
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = resize, max(resize, int(round(w * resize / h)))
    else:
        new_h, new_w = max(resize, int(round(h * resize / w))), resize
    pil = image_mod.fromarray(np.ascontiguousarray(image)).resize(
        (new_w, new_h), image_mod.BILINEAR
    )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.asarray(pil)[top : top + size, left : left + size]
