"""Fashion-MNIST on the real Debian files, and the tfds fallback when the IDX files are absent.

The real-file tests read the four IDX files independently here (gzip + NumPy) and compare with
what the loader and the eval stream return. They need the Debian package
``dataset-fashion-mnist`` (the CI script installs it) and are skipped with that reason otherwise.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

import csr_jax.data as data
from csr_jax.data import fashion_mnist

real_files = pytest.mark.skipif(
    fashion_mnist.find_idx_files(fashion_mnist.DEFAULT_DIR) is None,
    reason=f"real Fashion-MNIST IDX files not in {fashion_mnist.DEFAULT_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)


def _raw(name: str, offset: int) -> np.ndarray:
    with gzip.open(os.path.join(fashion_mnist.DEFAULT_DIR, name + ".gz")) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def raw():
    return {
        "train_images": _raw("train-images-idx3-ubyte", 16).reshape(-1, 28, 28),
        "train_labels": _raw("train-labels-idx1-ubyte", 8),
        "test_images": _raw("t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28),
        "test_labels": _raw("t10k-labels-idx1-ubyte", 8),
    }


@real_files
def test_real_files_default_dir_info():
    assert data.get_info("fashion_mnist") == data.DatasetInfo(
        "fashion_mnist", 10, (32, 32, 1), 60_000, 10_000
    )


@real_files
def test_real_files_load_as_the_original_split(raw):
    arrays = fashion_mnist.load_idx_dir(fashion_mnist.DEFAULT_DIR)
    for key in ("train_labels", "test_labels"):
        np.testing.assert_array_equal(arrays[key], raw[key])
    # A subset of the images is enough to see the byte order and the offsets are right.
    np.testing.assert_array_equal(arrays["train_images"][::997, ..., 0], raw["train_images"][::997])
    np.testing.assert_array_equal(arrays["test_images"][-5:, ..., 0], raw["test_images"][-5:])
    assert np.bincount(arrays["train_labels"]).tolist() == [6000] * 10
    assert np.bincount(arrays["test_labels"]).tolist() == [1000] * 10


@real_files
def test_normalisation_constants_are_the_training_set_statistics(raw):
    # Exact integer sums over the 47M pixel values (0..255), then the moments.
    pixels = raw["train_images"].ravel()
    total = float(pixels.sum(dtype=np.uint64))
    squares = float((pixels.astype(np.uint32) ** 2).sum(dtype=np.uint64))
    mean = total / pixels.size / 255
    std = np.sqrt(squares / pixels.size / 255**2 - mean**2)
    assert abs(mean - fashion_mnist.MEAN[0]) < 1e-6
    assert abs(std - fashion_mnist.STD[0]) < 1e-6


@real_files
def test_real_eval_stream_is_the_padded_test_set_in_order(raw):
    batch = next(
        data.make_eval_iterator(
            "fashion_mnist", global_batch_size=256, process_index=0, process_count=1
        )
    )
    assert batch["mask"].all()
    np.testing.assert_array_equal(batch["label"], raw["test_labels"][:256])
    pixels = (batch["image"][..., 0] * fashion_mnist.STD[0] + fashion_mnist.MEAN[0]) * 255
    expected = np.pad(raw["test_images"][:256].astype(np.float64), ((0, 0), (2, 2), (2, 2)))
    np.testing.assert_allclose(pixels, expected, atol=1e-3)


@real_files
def test_real_train_batches(raw):
    it = data.make_train_iterator(
        "fashion_mnist", global_batch_size=128, seed=0, process_index=0, process_count=1
    )
    assert it.steps_per_epoch == 60_000 // 128
    lo = (0 - fashion_mnist.MEAN[0]) / fashion_mnist.STD[0]
    hi = (1 - fashion_mnist.MEAN[0]) / fashion_mnist.STD[0]
    labels = []
    for _ in range(4):
        batch = next(it)
        assert batch["image"].shape == (128, 32, 32, 1) and batch["image"].dtype == np.float32
        assert lo - 1e-5 <= batch["image"].min() and batch["image"].max() <= hi + 1e-5
        labels.append(batch["label"])
    # A shuffled stream of a balanced set: every class shows up in 512 examples.
    assert set(np.concatenate(labels).tolist()) == set(range(10))


# --- the tfds fallback (no real data needed) -----------------------------------------------------


def _fake_tfds_dir(root) -> str:
    version = os.path.join(str(root), "fashion_mnist", "3.0.1")
    os.makedirs(version)
    with open(os.path.join(version, "dataset_info.json"), "w") as f:
        f.write("{}")
    return str(root)


def test_resolve_prefers_idx_files_then_a_tfds_copy(tmp_path):
    tfds_dir = _fake_tfds_dir(tmp_path / "tfds")
    assert fashion_mnist.resolve(tfds_dir) == ("tfds", tfds_dir)
    with pytest.raises(data.DatasetNotFoundError):
        fashion_mnist.resolve(str(tmp_path / "nothing"))


def test_tfds_fallback_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds_dir = _fake_tfds_dir(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=16):
        info = data.get_info("fashion_mnist", data_dir=tfds_dir)
        assert info.image_shape == (32, 32, 1) and info.num_train == 16
        batch = next(
            data.make_train_iterator(
                "fashion_mnist",
                global_batch_size=8,
                seed=0,
                data_dir=tfds_dir,
                process_index=0,
                process_count=1,
            )
        )
        assert batch["image"].shape == (8, 32, 32, 1) and batch["label"].max() < 10
