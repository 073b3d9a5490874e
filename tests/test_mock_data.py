"""`mock_data=True`: tfds mock examples through the real pipeline, without any prepared files."""

from __future__ import annotations

import numpy as np
import pytest

from csr_jax import data
from csr_jax.data import registry, tfds_sources

pytest.importorskip("tensorflow_datasets")

ONE_PROCESS = dict(process_index=0, process_count=1)


@pytest.mark.parametrize(
    "name,size,shape,num_train,num_eval",
    [
        ("cifar10", None, (32, 32, 3), 50_000, 10_000),
        ("cifar100", None, (32, 32, 3), 50_000, 10_000),
        ("fashion_mnist", None, (32, 32, 1), 60_000, 10_000),
        ("imagenet2012", 48, (48, 48, 3), 1_281_167, 50_000),
    ],
)
def test_mock_splits_have_the_real_lengths_and_read_no_files(
    tmp_path, name, size, shape, num_train, num_eval
):
    empty = tmp_path / "empty"  # A data_dir with nothing in it: a real read would fail here.
    info = data.get_info(name, data_dir=str(empty), image_size=size, mock_data=True)
    assert info.image_shape == shape
    assert (info.num_train, info.num_eval) == (num_train, num_eval)
    assert not empty.exists()
    with pytest.raises(data.DatasetNotFoundError):
        data.get_info(name, data_dir=str(empty), image_size=size)


def test_mock_train_batches_go_through_the_real_augmentation():
    it = data.make_train_iterator(
        "cifar10", global_batch_size=8, seed=3, mock_data=True, **ONE_PROCESS
    )
    batch = next(it)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert (
        batch["label"].dtype == np.int32 and 0 <= batch["label"].min() <= batch["label"].max() < 10
    )
    # The same step of the same stream, rebuilt: the mock examples are deterministic.
    again = next(
        data.make_train_iterator(
            "cifar10", global_batch_size=8, seed=3, mock_data=True, **ONE_PROCESS
        )
    )
    np.testing.assert_array_equal(batch["image"], again["image"])
    # ImageNet's mock images have random sizes; the Inception crop brings them to image_size.
    big = next(
        data.make_train_iterator(
            "imagenet2012",
            global_batch_size=4,
            seed=0,
            image_size=40,
            mock_data=True,
            **ONE_PROCESS,
        )
    )
    assert big["image"].shape == (4, 40, 40, 3) and np.isfinite(big["image"]).all()


def test_mock_eval_is_the_real_eval_transform_of_the_mock_examples():
    dataset = registry.build("cifar10", mock=True)
    raw_images, raw_labels = dataset.eval.read(np.arange(6))
    expected = dataset.transform.eval(raw_images, raw_labels)
    batch = next(
        data.make_eval_iterator("cifar10", global_batch_size=6, mock_data=True, **ONE_PROCESS)
    )
    np.testing.assert_allclose(batch["image"], expected["image"])
    np.testing.assert_array_equal(batch["label"], raw_labels)
    assert batch["mask"].all()
    # Normalised with ImageNet's mean/std, as real CIFAR is: not raw uint8 pixel values.
    assert -3.0 < batch["image"].min() and batch["image"].max() < 3.0


def test_datasets_without_files_are_unchanged_by_mock_data():
    plain = next(data.make_train_iterator("digits", global_batch_size=8, seed=0, **ONE_PROCESS))
    mocked = next(
        data.make_train_iterator(
            "digits", global_batch_size=8, seed=0, mock_data=True, **ONE_PROCESS
        )
    )
    np.testing.assert_array_equal(plain["image"], mocked["image"])
    np.testing.assert_array_equal(plain["label"], mocked["label"])


def test_a_mock_stream_does_not_resume_a_real_one():
    mocked = data.make_train_iterator(
        "synthetic", global_batch_size=8, seed=0, mock_data=True, **ONE_PROCESS
    )
    real = data.make_train_iterator("synthetic", global_batch_size=8, seed=0, **ONE_PROCESS)
    with pytest.raises(ValueError, match="mock_data"):
        real.set_state(mocked.get_state())
    # A state saved before the field existed is a real-data state.
    old = real.get_state()
    del old["mock_data"]
    real.set_state(old)
    with pytest.raises(ValueError, match="mock_data"):
        mocked.set_state(old)


def test_bad_mock_values_are_refused():
    with pytest.raises(ValueError, match="mock must be True or False"):
        registry.build("cifar10", mock="yes")
    with pytest.raises(ValueError, match="no mock data"):
        tfds_sources.open_mock_split("cifar10", "validation")
