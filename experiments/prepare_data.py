"""Prepare a tensorflow-datasets dataset once, as array_record files the trainer reads without TF.

Usage::

    python -m experiments.prepare_data cifar10 [--data_dir DIR]
    python -m experiments.prepare_data cifar100 [--data_dir DIR]
    python -m experiments.prepare_data fashion_mnist [--data_dir DIR]
    python -m experiments.prepare_data imagenet2012 [--data_dir DIR] [--manual_dir DIR]

This runs tfds's ``download_and_prepare`` with ``file_format='array_record'``: array_record
supports random access, which ``tfds.data_source`` (and so grain, and so training) needs. Writing
the files needs TensorFlow, which the training environment does not: install it only where you
prepare data, ``pip install -e '.[prepare]'``. Training then reads the files with
``--config.dataset=<name> --config.data_dir=DIR`` (DIR defaults to tfds's, ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``).

ImageNet cannot be downloaded by a script: register at https://image-net.org/download-images,
download ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` and put both (unextracted)
in the manual directory, by default ``<data_dir>/downloads/manual/`` (tfds's convention).

``digits`` and ``synthetic`` need no preparation; Fashion-MNIST is also read straight from its
IDX files (Debian: ``apt-get install dataset-fashion-mnist``), which needs no preparation either.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

TFDS_DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagenet2012")
NO_PREPARATION = {
    "digits": "digits ships with scikit-learn; nothing to prepare.",
    "synthetic": "synthetic data is generated on the fly; nothing to prepare.",
    "synthetic_imagenet": "synthetic data is generated on the fly; nothing to prepare.",
}
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def default_data_dir() -> str:
    """tfds's default data directory, the one training uses when ``data_dir`` is not set."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def imagenet_layout(manual_dir: str) -> str:
    """The manual-download instructions for ImageNet, with the directory spelt out."""
    return (
        "imagenet2012 must be downloaded by hand (tfds cannot fetch it):\n"
        "  1. register at https://image-net.org/download-images and download\n"
        "     ILSVRC2012_img_train.tar (~138 GB) and ILSVRC2012_img_val.tar (~6.3 GB);\n"
        f"  2. put both files, NOT extracted, in {manual_dir}/ :\n"
        f"       {manual_dir}/ILSVRC2012_img_train.tar\n"
        f"       {manual_dir}/ILSVRC2012_img_val.tar\n"
        "     (or pass --manual_dir DIR where they already are);\n"
        "  3. run this command again. Preparing takes hours and ~150 GB of free disk."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.prepare_data",
        description="Prepare a tensorflow-datasets dataset (array_record) for training.",
        epilog=imagenet_layout("<data_dir>/downloads/manual"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help=f"one of: {', '.join(TFDS_DATASETS)}")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="where to write the dataset (default: $TFDS_DATA_DIR or "
        "~/tensorflow_datasets); pass the same as --config.data_dir",
    )
    parser.add_argument(
        "--manual_dir",
        default=None,
        help="imagenet2012 only: directory with the two ILSVRC2012 tar files "
        "(default: <data_dir>/downloads/manual)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = args.name
    if name in NO_PREPARATION:
        print(NO_PREPARATION[name])
        return 0
    if name not in TFDS_DATASETS:
        print(
            f"error: unknown dataset {name!r}; this command prepares: {', '.join(TFDS_DATASETS)}",
            file=sys.stderr,
        )
        return 2
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir or default_data_dir()))

    if name == "imagenet2012":
        manual_dir = os.path.abspath(
            os.path.expanduser(args.manual_dir or os.path.join(data_dir, "downloads", "manual"))
        )
        missing = [f for f in IMAGENET_ARCHIVES if not os.path.isfile(os.path.join(manual_dir, f))]
        if missing:
            print(
                f"error: missing {', '.join(missing)} in {manual_dir}.\n"
                f"{imagenet_layout(manual_dir)}",
                file=sys.stderr,
            )
            return 2
    else:
        manual_dir = None

    if importlib.util.find_spec("tensorflow") is None:
        print(
            f"error: preparing {name} needs TensorFlow, which is not installed. Install it where "
            "you prepare data with `pip install -e '.[prepare]'` (tensorflow-cpu), then run this "
            "again. Training afterwards does not need TensorFlow.",
            file=sys.stderr,
        )
        return 2

    import tensorflow_datasets as tfds

    print(f"Preparing {name} as array_record in {data_dir} ...")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
    except Exception as e:  # Report every failure the same way: what failed and what to check.
        print(
            f"error: preparing {name} failed: {type(e).__name__}: {e}\n"
            "Check the network connection (tfds downloads the source files) and the free disk "
            f"space in {data_dir}.",
            file=sys.stderr,
        )
        return 1
    print(
        f"Done: {name} is in {builder.data_dir}.\n"
        f"Train with --config.dataset={name} --config.data_dir={data_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
