"""Tests of the input pipelines (csr_jax.data): contract, determinism, sharding, resumption.

Most pipeline properties are checked on a small Fashion-MNIST written in the test as IDX files
whose images are constant: image ``i`` is filled with the value ``i``, so an example's identity
can be read back from the centre pixel of any augmented batch (the random crop moves the image
by at most 4 pixels and the flip mirrors it, neither reaches the centre of a constant image).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import csr_jax.data as data
from csr_jax.data import augment, fashion_mnist
from csr_jax.data.transforms import BatchLayout, SmallImages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_TEST = 200, 50


def write_idx(path: str, array: np.ndarray, *, compress: bool) -> None:
    """Writes ``array`` (uint8) as an IDX file: 0x0000, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)


def make_fake_fashion(directory, *, compress: bool = True) -> str:
    """Train image i is constant i (i < 200), test image j constant 200 + j; label = value % 10."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    train = np.arange(N_TRAIN, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    test = (N_TRAIN + np.arange(N_TEST, dtype=np.uint8))[:, None, None] * np.ones(
        (1, 28, 28), np.uint8
    )
    suffix = ".gz" if compress else ""
    write_idx(os.path.join(directory, "train-images-idx3-ubyte" + suffix), train, compress=compress)
    write_idx(
        os.path.join(directory, "train-labels-idx1-ubyte" + suffix),
        np.arange(N_TRAIN, dtype=np.uint8) % 10,
        compress=compress,
    )
    write_idx(os.path.join(directory, "t10k-images-idx3-ubyte" + suffix), test, compress=compress)
    write_idx(
        os.path.join(directory, "t10k-labels-idx1-ubyte" + suffix),
        (N_TRAIN + np.arange(N_TEST, dtype=np.uint8)) % 10,
        compress=compress,
    )
    return directory


def ids(batch: dict) -> np.ndarray:
    """The example identity (the constant pixel value) of each row of a fake-Fashion batch."""
    centre = batch["image"][:, 16, 16, 0]
    return np.rint((centre * fashion_mnist.STD[0] + fashion_mnist.MEAN[0]) * 255).astype(int)


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    return make_fake_fashion(tmp_path_factory.mktemp("fashion"))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def train_it(fake_dir, *, seed=0, batch=32, p=0, count=1, **kw):
    return data.make_train_iterator(
        "fashion_mnist",
        global_batch_size=batch,
        seed=seed,
        data_dir=fake_dir,
        process_index=p,
        process_count=count,
        **kw,
    )


# --- registry and info ---------------------------------------------------------------------------


def test_list_datasets_names_every_supported_dataset():
    assert data.list_datasets() == sorted(data.list_datasets())
    assert {"digits", "fashion_mnist", "synthetic", "cifar10", "cifar100", "imagenet2012"} <= set(
        data.list_datasets()
    )


def test_unknown_dataset_names_the_available_ones():
    with pytest.raises(ValueError, match="available: .*digits"):
        data.get_info("mnist")


def test_digits_info_and_stratified_split():
    info = data.get_info("digits")
    assert info == data.DatasetInfo("digits", 10, (16, 16, 1), 1437, 360)
    assert data.get_info("digits", image_size=24).image_shape == (24, 24, 1)
    labels = np.concatenate(
        [
            b["label"][b["mask"]]
            for b in data.make_eval_iterator(
                "digits", global_batch_size=100, process_index=0, process_count=1
            )
        ]
    )
    counts = np.bincount(labels, minlength=10)
    # Stratified: each class holds its share (~1/10) of the 360 test images.
    assert counts.sum() == 360 and counts.min() >= 34 and counts.max() <= 38


def test_digits_split_partitions_the_upsampled_sklearn_images():
    from PIL import Image
    from sklearn.datasets import load_digits

    from csr_jax.data import digits

    raw = load_digits()
    pil = np.stack(
        [
            np.asarray(
                Image.fromarray((im / 16).astype(np.float32), mode="F").resize(
                    (16, 16), Image.BILINEAR
                )
            )
            for im in raw.images
        ]
    )
    ours = digits.load_digits(16)

    def rows(images, labels):
        table = np.concatenate(
            [np.round(images.reshape(len(images), -1), 4), labels[:, None].astype(float)], axis=1
        )
        return table[np.lexsort(table.T[::-1])]

    # Train + test together are exactly the 1,797 (image, label) pairs, none twice, none lost.
    np.testing.assert_array_equal(
        rows(
            np.concatenate([ours["train_images"], ours["test_images"]]),
            np.concatenate([ours["train_labels"], ours["test_labels"]]),
        ),
        rows(pil, raw.target),
    )
    # The eval stream is the test split, normalised with the train split's statistics.
    batch = next(
        data.make_eval_iterator("digits", global_batch_size=360, process_index=0, process_count=1)
    )
    mean, std = ours["train_images"].mean(), ours["train_images"].std()
    np.testing.assert_allclose(batch["image"] * std + mean, ours["test_images"], atol=1e-5)
    np.testing.assert_array_equal(batch["label"], ours["test_labels"])


def test_synthetic_shapes_and_classes():
    assert data.get_info("synthetic") == data.DatasetInfo(
        "synthetic", 10, (32, 32, 3), 50_000, 10_000
    )
    info = data.get_info("synthetic_imagenet", image_size=64)
    assert info.image_shape == (64, 64, 3) and info.num_classes == 1000
    batch = next(
        data.make_train_iterator(
            "synthetic",
            global_batch_size=8,
            seed=0,
            image_size=20,
            process_index=0,
            process_count=1,
        )
    )
    assert batch["image"].shape == (8, 20, 20, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert 0 <= batch["label"].min() and batch["label"].max() < 10
    assert -1.0 - 1e-6 <= batch["image"].min() and batch["image"].max() <= 1.0 + 1e-6


@pytest.mark.parametrize("name,shape", [("digits", (16, 16, 1)), ("synthetic", (32, 32, 3))])
def test_train_batch_contract(name, shape):
    batch = next(
        data.make_train_iterator(
            name, global_batch_size=64, seed=3, process_index=0, process_count=1
        )
    )
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (64, *shape) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
    assert np.isfinite(batch["image"]).all()
    assert 0 <= batch["label"].min() and batch["label"].max() < 10


def test_digits_normalisation_uses_its_own_statistics():
    batch = next(
        data.make_eval_iterator("digits", global_batch_size=360, process_index=0, process_count=1)
    )
    # Train-split statistics applied to the test split: close to zero mean, unit variance.
    assert abs(batch["image"].mean()) < 0.1
    assert 0.9 < batch["image"].std() < 1.1


# --- Fashion-MNIST on generated IDX files -------------------------------------------------------


def test_fashion_info_and_shapes_on_generated_idx(fake_dir):
    assert data.get_info("fashion_mnist", data_dir=fake_dir) == data.DatasetInfo(
        "fashion_mnist", 10, (32, 32, 1), N_TRAIN, N_TEST
    )
    assert data.get_info("fashion_mnist", data_dir=fake_dir, image_size=28).image_shape == (
        28,
        28,
        1,
    )
    batch = next(train_it(fake_dir))
    assert batch["image"].shape == (32, 32, 32, 1) and batch["image"].dtype == np.float32
    assert (batch["label"] == ids(batch) % 10).all()  # images and labels stay paired


def test_fashion_eval_is_zero_padded_to_32_and_normalised(fake_dir):
    batch = next(
        data.make_eval_iterator(
            "fashion_mnist",
            global_batch_size=N_TEST,
            data_dir=fake_dir,
            process_index=0,
            process_count=1,
        )
    )
    pixels = (batch["image"][..., 0] * fashion_mnist.STD[0] + fashion_mnist.MEAN[0]) * 255
    expected = np.zeros((N_TEST, 32, 32))
    expected[:, 2:30, 2:30] = (N_TRAIN + np.arange(N_TEST))[:, None, None]
    np.testing.assert_allclose(pixels, expected, atol=1e-3)


def test_fashion_native_28(fake_dir):
    batch = next(
        data.make_eval_iterator(
            "fashion_mnist",
            global_batch_size=10,
            data_dir=fake_dir,
            image_size=28,
            process_index=0,
            process_count=1,
        )
    )
    assert batch["image"].shape == (10, 28, 28, 1)
    assert np.ptp(batch["image"][0]) == 0  # a constant image with no padding stays constant


def test_gzipped_and_plain_idx_files_load_the_same(tmp_path, fake_dir):
    plain = make_fake_fashion(tmp_path / "plain", compress=False)
    a = fashion_mnist.load_idx_dir(fake_dir)
    b = fashion_mnist.load_idx_dir(plain)
    for key in fashion_mnist.IDX_FILES:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["train_images"].shape == (N_TRAIN, 28, 28, 1)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda raw: b"\x01\x00" + raw[2:], "bad magic"),
        (lambda raw: raw[:2] + b"\x0d" + raw[3:], "element type 0x0d"),
        (lambda raw: raw[:-5], "header says"),
        (lambda raw: raw + b"\x00", "header says"),
        (lambda raw: raw[:3], "shorter than an IDX header"),
    ],
)
def test_corrupt_idx_raises_a_clear_error(tmp_path, damage, message):
    directory = make_fake_fashion(tmp_path / "bad", compress=False)
    path = os.path.join(directory, "t10k-labels-idx1-ubyte")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(damage(raw))
    with pytest.raises(fashion_mnist.IDXFormatError, match=message) as err:
        data.get_info("fashion_mnist", data_dir=directory)
    assert "t10k-labels-idx1-ubyte" in str(err.value)


def test_damaged_gzip_and_mismatched_counts_raise(tmp_path):
    directory = make_fake_fashion(tmp_path / "gz")
    path = os.path.join(directory, "train-images-idx3-ubyte.gz")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(fashion_mnist.IDXFormatError, match="gzip stream is damaged"):
        fashion_mnist.load_idx_dir(directory)

    directory = make_fake_fashion(tmp_path / "count")
    write_idx(
        os.path.join(directory, "train-labels-idx1-ubyte.gz"),
        np.zeros(N_TRAIN - 1, np.uint8),
        compress=True,
    )
    with pytest.raises(fashion_mnist.IDXFormatError, match="199 labels for 200 images"):
        fashion_mnist.load_idx_dir(directory)


def test_missing_fashion_files_raise_dataset_not_found(tmp_path):
    directory = make_fake_fashion(tmp_path / "partial")
    os.remove(os.path.join(directory, "t10k-images-idx3-ubyte.gz"))
    for where in (directory, tmp_path / "empty"):
        with pytest.raises(data.DatasetNotFoundError) as err:
            data.make_train_iterator(
                "fashion_mnist",
                global_batch_size=8,
                seed=0,
                data_dir=where,
                process_index=0,
                process_count=1,
            )
        message = str(err.value)
        assert "python -m experiments.prepare_data fashion_mnist" in message
        assert "apt-get install dataset-fashion-mnist" in message
        assert "--config.data_dir" in message
    assert isinstance(err.value, FileNotFoundError)


# --- determinism, epochs, resumption -------------------------------------------------------------


def test_same_seed_same_stream_across_epochs_and_thread_counts(fake_dir):
    # 200 // 32 = 6 steps per epoch: 14 batches cross two epoch boundaries.
    a = take(train_it(fake_dir, seed=7, num_threads=0), 14)
    b = take(train_it(fake_dir, seed=7, num_threads=3), 14)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_different_seeds_differ(fake_dir):
    a, b = next(train_it(fake_dir, seed=1)), next(train_it(fake_dir, seed=2))
    assert not np.array_equal(ids(a), ids(b))
    # Same examples, other seed: the augmentation differs too (not only the order).
    x, y = (
        next(
            data.make_train_iterator(
                "digits", global_batch_size=64, seed=1, process_index=0, process_count=1
            )
        ),
        next(
            data.make_train_iterator(
                "digits", global_batch_size=64, seed=2, process_index=0, process_count=1
            )
        ),
    )
    assert not np.array_equal(x["image"], y["image"])


def test_epochs_are_reshuffled_permutations_with_remainder_dropped(fake_dir):
    it = train_it(fake_dir, seed=5)
    assert it.steps_per_epoch == N_TRAIN // 32
    epochs = [np.concatenate([ids(b) for b in take(it, 6)]) for _ in range(3)]
    for epoch in epochs:
        assert len(epoch) == 192 and len(set(epoch.tolist())) == 192  # distinct examples
        assert set(epoch.tolist()) <= set(range(N_TRAIN))
    assert not np.array_equal(epochs[0], epochs[1])
    assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # another 8 are left out


def test_state_is_json_and_resumes_the_identical_stream(fake_dir):
    original = train_it(fake_dir, seed=11, num_threads=2)
    take(original, 4)
    state = json.loads(json.dumps(original.get_state()))
    expected = take(original, 9)  # crosses the epoch boundary after step 6
    resumed = train_it(fake_dir, seed=11, num_threads=0)
    take(resumed, 1)  # a fresh iterator that has already moved must still jump to the state
    resumed.set_state(state)
    for x, y in zip(expected, take(resumed, 9)):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_state_from_another_stream_is_refused(fake_dir):
    state = train_it(fake_dir, seed=1).get_state()
    with pytest.raises(ValueError, match="seed: saved 1 vs now 2"):
        train_it(fake_dir, seed=2).set_state(state)
    with pytest.raises(ValueError, match="not a train-iterator state"):
        train_it(fake_dir, seed=1).set_state({"next_index": 3})


# --- multi-process sharding ----------------------------------------------------------------------


def test_process_shards_are_disjoint_and_form_the_single_process_batch(fake_dir):
    single = take(train_it(fake_dir, seed=3, batch=32), 8)
    shards = [take(train_it(fake_dir, seed=3, batch=32, p=p, count=2), 8) for p in range(2)]
    for step, whole in enumerate(single):
        parts = [shards[p][step] for p in range(2)]
        assert all(part["image"].shape[0] == 16 for part in parts)
        a, b = ids(parts[0]), ids(parts[1])
        assert not set(a.tolist()) & set(b.tolist())
        assert sorted(np.concatenate([a, b]).tolist()) == sorted(ids(whole).tolist())
        # Process p holds rows p::2 of the global batch, augmentation included.
        for p in range(2):
            np.testing.assert_array_equal(parts[p]["image"], whole["image"][p::2])


def test_state_resumes_on_a_different_process_count(fake_dir):
    it = train_it(fake_dir, seed=4, batch=32)
    take(it, 3)
    state = it.get_state()
    expected = next(it)
    resumed = train_it(fake_dir, seed=4, batch=32, p=1, count=2)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"][1::2])


def test_batch_not_divisible_by_processes_is_refused(fake_dir):
    with pytest.raises(ValueError, match="not divisible by the number of processes"):
        train_it(fake_dir, batch=33, count=2)
    with pytest.raises(ValueError, match="larger than the training split"):
        train_it(fake_dir, batch=256)
    with pytest.raises(ValueError, match="process_index < process_count"):
        train_it(fake_dir, p=2, count=2)


def test_process_defaults_come_from_jax():
    import jax

    batch = next(
        data.make_train_iterator("synthetic", global_batch_size=4 * jax.process_count(), seed=0)
    )
    assert batch["image"].shape[0] == 4


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError, match="image_size must be an integer >= 8"):
        data.get_info("digits", image_size=4)
    with pytest.raises(ValueError, match="image_size must be an integer"):
        data.get_info("synthetic", image_size=32.0)


@pytest.mark.parametrize("count,batch", [(1, 16), (2, 12), (3, 12), (2, 128)])
def test_eval_covers_every_example_once_with_masked_padding(fake_dir, count, batch):
    seen, lengths = [], []
    for p in range(count):
        it = data.make_eval_iterator(
            "fashion_mnist",
            global_batch_size=batch,
            data_dir=fake_dir,
            process_index=p,
            process_count=count,
        )
        batches = list(it)
        lengths.append(len(batches))
        assert len(batches) == len(it) == -(-N_TEST // batch)
        for b in batches:
            assert b["mask"].dtype == bool and b["image"].shape == (batch // count, 32, 32, 1)
            assert b["label"].dtype == np.int32
            seen.extend(ids(b)[b["mask"]].tolist())
            assert (b["image"][~b["mask"]] == 0).all() and (b["label"][~b["mask"]] == 0).all()
            assert (b["label"][b["mask"]] == ids(b)[b["mask"]] % 10).all()
    assert len(set(lengths)) == 1
    assert sorted(seen) == list(range(N_TRAIN, N_TRAIN + N_TEST))  # each exactly once


# --- augmentation --------------------------------------------------------------------------------


def _is_crop_of(out, padded, size):
    """Offsets (dy, dx, flipped) at which ``out`` is a window of ``padded``, or None."""
    for flipped in (False, True):
        src = padded[:, ::-1] if flipped else padded
        for dy in range(padded.shape[0] - size + 1):
            for dx in range(padded.shape[1] - size + 1):
                window = src[dy : dy + size, dx : dx + size]
                if np.array_equal(window, out):
                    return dy, dx, flipped
    return None


@pytest.mark.parametrize("flip", [True, False])
def test_crop_flip_outputs_are_windows_of_the_padded_images(flip):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(24, 8, 8, 1), dtype=np.uint8)
    t = SmallImages(
        size=8, pad_to_size=False, crop_pad=2, flip=flip, mean=(0.0,), std=(1.0,), pixel_max=255.0
    )
    out = t.train(images, np.zeros(24, np.int32), np.random.default_rng(1), BatchLayout(24, 0, 1))
    found = []
    for i in range(24):
        padded = np.pad(images[i, ..., 0], 2)
        hit = _is_crop_of(np.rint(out["image"][i, ..., 0] * 255).astype(np.uint8), padded, 8)
        assert hit is not None
        found.append(hit)
    flips = {f for _, _, f in found}
    assert flips == ({False, True} if flip else {False})  # digits never flip
    assert len({(dy, dx) for dy, dx, _ in found}) > 5  # offsets vary over [0, 4]^2


def test_resize_matrix_matches_pil_bilinear():
    from PIL import Image

    rng = np.random.default_rng(0)
    for src, dst in [(8, 16), (8, 13), (28, 14), (32, 20)]:
        x = rng.random((src, src)).astype(np.float32)
        ref = np.asarray(Image.fromarray(x, mode="F").resize((dst, dst), Image.BILINEAR))
        ours = augment.resize_batch(x[None, :, :, None], dst)[0, :, :, 0]
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_inception_crop_boxes_lie_inside_and_follow_the_ranges():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(20, 400, size=2)
        top, left, ch, cw = augment.inception_crop_box(rng.random(augment.INCEPTION_DRAWS), h, w)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    # First attempt fits: area fraction (0.08 + 0.92 * 0.5) and ratio exp(0) = 1 -> a square.
    u = np.full(augment.INCEPTION_DRAWS, 0.5)
    top, left, ch, cw = augment.inception_crop_box(u, 100, 100)
    assert ch == cw == round(np.sqrt(0.54 * 100 * 100))
    # No attempt fits (area fraction ~1 with extreme ratios in a long thin image): centre crop.
    u = np.ones(augment.INCEPTION_DRAWS)
    assert augment.inception_crop_box(u, 10, 200) == (
        0,
        (200 - round(10 * 4 / 3)) // 2,
        10,
        round(10 * 4 / 3),
    )


def test_resize_center_crop_shape():
    image = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    assert augment.resize_center_crop(image, 256, 224).shape == (224, 224, 3)


# --- tensorflow-datasets path (mocked) -----------------------------------------------------------


def test_tfds_cifar10_under_mock_data_yields_batches():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        info = data.get_info("cifar10")
        assert info.image_shape == (32, 32, 3) and info.num_classes == 10 and info.num_train == 24
        it = data.make_train_iterator(
            "cifar10", global_batch_size=8, seed=0, process_index=0, process_count=1
        )
        batches = take(it, 4)  # crosses the 3-step epoch
        for batch in batches:
            assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
            assert batch["label"].dtype == np.int32 and batch["label"].max() < 10
            assert np.isfinite(batch["image"]).all()
        masks = [
            b["mask"]
            for b in data.make_eval_iterator(
                "cifar100", global_batch_size=10, process_index=0, process_count=1
            )
        ]
        assert [int(m.sum()) for m in masks] == [10, 10, 4]


def test_tfds_imagenet_under_mock_data_crops_to_image_size():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        batch = next(
            data.make_train_iterator(
                "imagenet2012",
                global_batch_size=2,
                seed=0,
                image_size=64,
                process_index=0,
                process_count=1,
            )
        )
        assert batch["image"].shape == (2, 64, 64, 3) and batch["label"].max() < 1000
        ev = next(
            data.make_eval_iterator(
                "imagenet2012", global_batch_size=4, image_size=64, process_index=0, process_count=1
            )
        )
        assert ev["image"].shape == (4, 64, 64, 3) and ev["mask"].all()


def test_unprepared_tfds_dataset_names_the_prepare_command(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(
        data.DatasetNotFoundError, match=r"python -m experiments\.prepare_data cifar10 --data_dir"
    ):
        data.get_info("cifar10", data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # looking did not create anything


def test_prepare_data_without_tensorflow_says_what_to_install(tmp_path):
    if sys.modules.get("tensorflow") is not None:
        pytest.skip("TensorFlow is installed; this checks the message for machines without it")
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed; this checks the message for machines without it")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.prepare_data", "cifar10", "--data_dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "needs TensorFlow" in result.stderr and "pip install -e '.[prepare]'" in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.prepare_data",
            "imagenet2012",
            "--data_dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "ILSVRC2012_img_train.tar" in result.stderr
    assert os.path.join(str(tmp_path), "downloads", "manual") in result.stderr


# --- no TensorFlow on the file-free / IDX paths --------------------------------------------------


def test_digits_fashion_synthetic_never_import_tensorflow(fake_dir):
    script = textwrap.dedent(f"""
        import sys
        import csr_jax.data as data
        for name, kw in [("digits", {{}}), ("synthetic", {{}}),
                         ("fashion_mnist", {{"data_dir": {fake_dir!r}}})]:
            data.get_info(name, **kw)
            next(data.make_train_iterator(name, global_batch_size=8, seed=0, process_index=0,
                                          process_count=1, **kw))
            next(data.make_eval_iterator(name, global_batch_size=8, process_index=0,
                                         process_count=1, **kw))
        if {os.path.isdir(fashion_mnist.DEFAULT_DIR)!r}:
            next(data.make_eval_iterator("fashion_mnist", global_batch_size=8))
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
        print("IMPORTED", bad)
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout, result.stdout
