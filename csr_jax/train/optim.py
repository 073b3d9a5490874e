"""Optimizer and learning-rate schedules.

SGD with (optionally Nesterov) momentum and PyTorch-style coupled weight decay: the decay term is
added to the gradient *before* momentum, which is what the reference's `torch.optim.SGD(...,
weight_decay=5e-4)` does, so hyperparameters carry over. Decay applies to conv/dense kernels only:
decaying BatchNorm scales, biases or CSR-Conv's scalar mixing weights alpha/beta pulls them to 0,
which changes what the layer computes instead of regularising it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import optax

from csr_jax.train.errors import ConfigError

SCHEDULES = ("cosine", "step", "constant")


def _path_name(path) -> str:
    parts = []
    for key in path:
        name = getattr(key, "key", None)
        if name is None:
            name = getattr(key, "name", None)
        if name is None:
            name = getattr(key, "idx", key)
        parts.append(str(name))
    return "/".join(parts)


def weight_decay_mask(params: Any, exclude: str = "", min_ndim: int = 2) -> Any:
    """True for the parameters that get weight decay.

    Args:
      params: the `params` collection.
      exclude: a regular expression; parameters whose '/'-joined path matches it (`re.search`)
        get no decay even if they are kernels.
      min_ndim: kernels are the parameters with at least this many dimensions (conv kernels are
        4-D, dense kernels 2-D); BatchNorm scale/bias and biases are 1-D, alpha/beta 0-D.
    """
    pattern = re.compile(exclude) if exclude else None

    def decide(path, leaf):
        if leaf.ndim < min_ndim:
            return False
        return not (pattern and pattern.search(_path_name(path)))

    return jax.tree_util.tree_map_with_path(decide, params)


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`num_train_steps` if set, else `num_epochs` worth of steps."""
    if config.get("num_train_steps") is not None and config.num_train_steps > 0:
        return int(config.num_train_steps)
    if config.get("num_epochs") is not None and config.num_epochs > 0:
        return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))
    raise ConfigError("Set config.num_epochs or config.num_train_steps to a positive number.")


def make_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, num_steps: int
) -> optax.Schedule:
    """The learning rate per step.

    'cosine': linear warmup over `warmup_epochs` from 0 to `learning_rate`, then cosine to 0 at the
    last step. 'step': the reference's decay, `learning_rate * step_decay_factor **
    floor(epoch / step_decay_epochs)` (0.5 every 30 epochs), after the optional warmup.
    'constant': `learning_rate` after the warmup.
    """
    name = config.schedule
    base_lr = float(config.learning_rate)
    warmup = int(round(float(config.get("warmup_epochs", 0.0) or 0.0) * steps_per_epoch))
    warmup = min(warmup, max(num_steps - 1, 0))
    if name == "cosine":
        if warmup == 0:
            return optax.cosine_decay_schedule(base_lr, decay_steps=num_steps)
        return optax.warmup_cosine_decay_schedule(
            0.0, base_lr, warmup_steps=warmup, decay_steps=num_steps, end_value=0.0
        )
    if name == "step":
        every = max(1, int(round(float(config.step_decay_epochs) * steps_per_epoch)))
        main = optax.exponential_decay(
            base_lr,
            transition_steps=every,
            decay_rate=float(config.step_decay_factor),
            staircase=True,
        )
    elif name == "constant":
        main = optax.constant_schedule(base_lr)
    else:
        raise ConfigError(f"Unknown config.schedule {name!r}; choose one of {SCHEDULES}.")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule, params: Any
) -> optax.GradientTransformation:
    """SGD (+ momentum, Nesterov) or AdamW, with masked weight decay and optional clipping."""
    mask = weight_decay_mask(
        params,
        config.get("weight_decay_exclude", "") or "",
        min_ndim=int(config.get("weight_decay_min_ndim", 2)),
    )
    wd = float(config.weight_decay)
    parts = []
    if config.get("grad_clip_norm"):
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if config.optimizer == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        momentum = float(config.momentum) if config.momentum else None
        parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(config.nesterov)))
    elif config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=wd, mask=mask))
    else:
        raise ConfigError(
            f"Unknown config.optimizer {config.optimizer!r}; choose 'sgd' or 'adamw'."
        )
    return optax.chain(*parts)
