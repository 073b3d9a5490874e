"""DenseNet for CIFAR (Huang et al. 2017), the original (non-BC) variant: DenseNet-40, growth 12.

Block numbering for CSR policies: the three dense blocks are blocks 1..3; a transition layer
carries the index of the dense block it follows. Roles: ``stem`` (3x3, 3 -> 16), ``conv3x3``
(dense layers), ``transition`` (1x1 convs between dense blocks).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from csr_jax.models.layers import (
    ConvFactory,
    batch_norm,
    classifier,
    global_avg_pool,
    kaiming_fan_in,
)
from csr_jax.models.registry import CIFAR, register_model
from csr_jax.policy import Presets, TPreset

Array = jax.Array

PRESETS = Presets(
    t=TPreset(
        always=("conv3x3", "transition"),
        why="Every dense-layer 3x3 conv and both transition 1x1 convs become CSR: together 98% "
        "of the weights. A dense layer maps a wide concatenation (16..436 channels) to 12 "
        "new ones, where CSR costs about 1/T^2 of the conv; the square transitions cost 2/T^2. "
        "Only the 3->16 stem and the classifier stay ordinary.",
    )
)


@register_model(
    "densenet40",
    presets=PRESETS,
    input_shape=CIFAR,
    description="DenseNet-40, growth 12, CIFAR (1.0M)",
    depth=40,
    growth_rate=12,
)
class DenseNet(nn.Module):
    """Stem conv, ``num_blocks`` dense blocks of ``(depth - 4) / 3`` BN-ReLU-conv3x3 layers that each
    append ``growth_rate`` channels, transitions (BN-ReLU-conv1x1 keeping the width, 2x2 average
    pool) between blocks, final BN-ReLU, global average pool, dense.

    Attributes:
      num_classes: output classes.
      depth: total depth 3L + 4 (DenseNet-40: L = 12 layers per block).
      growth_rate: channels each dense layer adds (k = 12).
      init_features: stem width (16 in the original CIFAR DenseNet).
      num_blocks: dense blocks (3).
      dropout_rate: dropout after each conv (0.2 in the paper's runs without augmentation).
      conv, dtype: conv factory and compute dtype.
    """

    num_classes: int
    depth: int = 40
    growth_rate: int = 12
    init_features: int = 16
    num_blocks: int = 3
    dropout_rate: float = 0.0
    conv: ConvFactory = ConvFactory()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if (self.depth - 4) % 3 != 0 or self.depth < 7:
            raise ValueError(f"DenseNet depth must be 3L + 4 with L >= 1, got {self.depth}.")
        layers = (self.depth - 4) // 3
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = self.conv(
            self,
            x,
            name="stem",
            features=self.init_features,
            kernel_size=3,
            role="stem",
            kernel_init=kaiming_fan_in,
        )
        for b in range(1, self.num_blocks + 1):
            for i in range(1, layers + 1):
                name = f"dense{b}_layer{i}"
                y = batch_norm(train, self.dtype, f"{name}_bn", activation=nn.relu)(x)
                y = self.conv(
                    self,
                    y,
                    name=name,
                    features=self.growth_rate,
                    kernel_size=3,
                    role="conv3x3",
                    block=b,
                    kernel_init=kaiming_fan_in,
                )
                x = jnp.concatenate([x, drop(y).astype(x.dtype)], axis=-1)
            if b < self.num_blocks:
                name = f"transition{b}"
                y = batch_norm(train, self.dtype, f"{name}_bn", activation=nn.relu)(x)
                y = self.conv(
                    self,
                    y,
                    name=name,
                    features=x.shape[-1],
                    kernel_size=1,
                    role="transition",
                    block=b,
                    kernel_init=kaiming_fan_in,
                )
                x = nn.avg_pool(drop(y), (2, 2), strides=(2, 2))
        x = batch_norm(train, self.dtype, "final_bn", activation=nn.relu)(x)
        return classifier(global_avg_pool(x), self.num_classes, self.dtype)
