"""Defaults shared by every experiment config, and the `runlocal` smoke variant.

Each config file's `get_config(arg=None)` starts from `base_config()`, sets its dataset, model and
recipe, then calls `finalize(config, arg)`. `arg` is the text after ':' on the command line:
`--config experiments/configs/cifar10_resnet56.py:runlocal` gives a run that takes seconds on a
CPU (a few steps, tiny batches, a capped eval) while keeping the model and code path unchanged.
Any field can still be overridden on the command line, e.g. `--config.csr=none`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    """Every field the training loop reads, with neutral defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data. `image_size=None` keeps the dataset's native/default size.
    c.dataset = "digits"
    c.data_dir = config_dict.placeholder(str)
    c.image_size = config_dict.placeholder(int)
    # True: cifar10/cifar100/imagenet2012/fashion_mnist read tfds.testing.mock_data (random examples,
    # the real split sizes) instead of files, through the same pipeline: a smoke test on a machine
    # that has not prepared the data. digits and synthetic need no files and ignore it.
    c.mock_data = False

    # Model: a name from csr_jax.models.list_models(); `csr` is a preset of that model
    # ('reference', 't2', 't4', ...), 'none' for the ordinary network, or a full policy: its JSON
    # text (CSRPolicy.to_json(), e.g. '{"rules": [{"steps": 2, "roles": ["conv3x3"]}]}') or the
    # path of a .json file holding it.
    c.model = "resnet20"
    c.csr = config_dict.placeholder(str)
    c.model_overrides = ml_collections.ConfigDict()  # Extra fields for csr_jax.models.create.
    c.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16' (params stay float32).

    # Length. `num_train_steps` wins when set; otherwise `num_epochs` epochs of
    # `num_train // batch_size` steps.
    c.batch_size = 128  # Global, over all devices and processes.
    c.eval_batch_size = config_dict.placeholder(int)  # None: batch_size.
    c.num_epochs = config_dict.placeholder(float)
    c.num_train_steps = config_dict.placeholder(int)

    # Optimizer: SGD with momentum and coupled (PyTorch-style) weight decay on kernels only.
    c.optimizer = "sgd"  # 'sgd' or 'adamw'.
    c.learning_rate = 0.1  # Peak learning rate for the global batch.
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 5e-4
    c.weight_decay_min_ndim = 2  # Decay params with ndim >= this (kernels); 0 decays everything.
    c.weight_decay_exclude = ""  # Regex on 'a/b/kernel' paths excluded from decay.
    c.grad_clip_norm = config_dict.placeholder(float)
    c.label_smoothing = 0.0

    # Schedule: 'cosine' (linear warmup then cosine to 0), 'step' (lr * factor every
    # step_decay_epochs epochs) or 'constant'.
    c.schedule = "cosine"
    c.warmup_epochs = 0.0
    c.step_decay_epochs = 30.0
    c.step_decay_factor = 0.5

    # Bookkeeping. 0 disables the periodic action (the last step always evaluates and saves).
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_max_batches = config_dict.placeholder(int)  # None: the whole eval split.
    c.tensorboard = True
    return c


def finalize(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the command-line variant: '' / None (the full run) or 'runlocal' (a smoke run)."""
    arg = (arg or "").strip()
    if arg == "runlocal":
        config.batch_size = 8
        config.eval_batch_size = 8
        config.num_train_steps = 2
        config.warmup_epochs = 0.0
        config.log_every_steps = 1
        config.eval_every_steps = 2
        config.checkpoint_every_steps = 2
        config.eval_max_batches = 2
    elif arg:
        raise ValueError(
            f"Unknown config variant {arg!r}: use 'runlocal' (a few-step smoke run) or "
            "nothing (the full run)."
        )
    return config
