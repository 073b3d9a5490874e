"""PyTorch behaviours a backbone can opt into, where Flax's defaults differ from the authors' code.

- :class:`TorchStatsBatchNorm`: ``torch.nn.BatchNorm2d`` updates its running variance with the
  *unbiased* batch variance (``n / (n - 1)`` times the biased one, ``n`` = examples x pixels per
  channel); ``flax.linen.BatchNorm`` uses the biased one. Training normalises with the biased
  batch variance in both, so the two only differ in the running statistics, i.e. at eval.
- :func:`torch_default_bias_init`: ``nn.Linear`` / ``nn.Conv2d`` draw their bias from
  U(+-1/sqrt(fan_in)); Flax's default is zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from csr_jax.models import layers
from csr_jax.models.batch_norm import FusedBatchNorm, batch_moments

__all__ = ["TorchStatsBatchNorm", "torch_batch_norm", "torch_default_bias_init"]

Array = jax.Array


def torch_default_bias_init(fan_in: int) -> Callable[..., Array]:
    """PyTorch's default bias init for a layer with ``fan_in`` inputs: U(+-1/sqrt(fan_in))."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be positive, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchStatsBatchNorm(FusedBatchNorm):
    """``nn.BatchNorm`` whose running variance follows PyTorch: updated with the unbiased variance.

    Same variables (``scale``, ``bias``, ``mean``, ``var``), same forward pass and same running
    mean as ``nn.BatchNorm``; only the running-variance update differs:
    ``var <- momentum * var + (1 - momentum) * batch_var * n / (n - 1)``. The batch variance is
    recomputed the way ``nn.BatchNorm`` computes it (float32, E[x^2] - E[x]^2), which XLA merges
    with the normalisation's own reduction. Supports the default ``axis=-1`` without ``mask``
    and without ``axis_name`` (the training loop's batches are global arrays, so a reduction
    inside ``jit`` already covers every device).
    """

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        if mask is not None or self.axis_name is not None or self.axis not in (-1, x.ndim - 1):
            raise NotImplementedError(
                "TorchStatsBatchNorm supports axis=-1 without mask or axis_name; use nn.BatchNorm."
            )
        at_call = use_running_average
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        updating = not use_running_average and not self.is_initializing()
        old_var = self.get_variable("batch_stats", "var") if updating else None
        y = super().__call__(x, at_call)
        if updating:
            axes = tuple(range(x.ndim - 1))
            n = int(np.prod([x.shape[a] for a in axes]))
            if n < 2:
                raise ValueError(
                    f"{self.name}: the unbiased variance needs at least 2 values per "
                    f"channel, got {n} (batch x height x width)"
                )
            var = jnp.maximum(0.0, batch_moments(x)[1])
            self.put_variable(
                "batch_stats",
                "var",
                self.momentum * old_var + (1.0 - self.momentum) * var * (n / (n - 1)),
            )
        return y


def torch_batch_norm(
    train: bool,
    dtype: Any,
    name: str,
    epsilon: float = 1e-5,
    activation: Callable[[Array], Array] | None = None,
) -> nn.BatchNorm:
    """``layers.batch_norm`` (PyTorch's momentum and eps) with PyTorch's running-variance update."""
    return layers.batch_norm(
        train, dtype, name, epsilon, activation=activation, norm=TorchStatsBatchNorm
    )
