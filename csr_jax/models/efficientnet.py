"""EfficientNet-B0 in torchvision's layout: MBConv blocks with squeeze-and-excitation, SiLU,
stochastic depth.

Block numbering for CSR policies: the 16 MBConv blocks are blocks 1..16; stem and head have no
block index. Roles: ``stem``, ``expand``, ``depthwise``, ``se`` (both 1x1 convs of the gate),
``project``, ``head``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from csr_jax.models.layers import (
    ConvFactory,
    batch_norm,
    classifier,
    global_avg_pool,
    kaiming_fan_out,
    make_divisible,
)
from csr_jax.models.registry import IMAGENET, register_model
from csr_jax.policy import Presets, TPreset

Array = jax.Array

PRESETS = Presets(
    t=TPreset(
        always=("project",),
        where_smaller=("expand", "head", "se"),
        why="As for MobileNetV2: the narrowing 'project' convs always become CSR; the widening "
        "'expand' (C -> 6C) and head (320 -> 1280) convs and the squeeze-and-excitation convs "
        "(12% of the weights) where CSR is smaller: the SE squeeze conv (C -> C/24) from "
        "T = 2, expand and head from T = 3, the SE excite conv (C/24 -> C) from T = 5. Stem "
        "and depthwise convs stay ordinary; the 1.28M-weight classifier bounds the reduction.",
    )
)

# (expand ratio, kernel, first stride, output channels, repeats) of EfficientNet-B0.
B0_CFG: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class StochasticDepth(nn.Module):
    """Drop the whole residual branch of a sample with probability ``rate`` in training (torchvision's
    ``StochasticDepth(mode='row')``), scaling survivors by 1 / (1 - rate). Uses the 'dropout' rng."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if not train or self.rate == 0.0:
            return x
        survival = 1.0 - self.rate
        keep = jax.random.bernoulli(
            self.make_rng("dropout"), survival, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return x * keep.astype(x.dtype) / jnp.asarray(survival, x.dtype)


class MBConv(nn.Module):
    """1x1 expand (BN, SiLU) -> kxk depthwise (BN, SiLU) -> squeeze-and-excitation -> 1x1 project (BN);
    residual with stochastic depth when the stride is 1 and the width unchanged."""

    features: int
    expand_ratio: int
    kernel_size: int
    strides: int
    drop_rate: float
    block: int
    conv: ConvFactory
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c_in = x.shape[-1]
        hidden = make_divisible(c_in * self.expand_ratio)
        kw = dict(block=self.block, kernel_init=kaiming_fan_out)
        y = x
        if hidden != c_in:
            y = self.conv(
                self, y, name="expand", features=hidden, kernel_size=1, role="expand", **kw
            )
            y = batch_norm(train, self.dtype, "expand_bn", activation=nn.silu)(y)
        y = self.conv(
            self,
            y,
            name="depthwise",
            features=hidden,
            kernel_size=self.kernel_size,
            strides=self.strides,
            groups=hidden,
            role="depthwise",
            **kw,
        )
        y = batch_norm(train, self.dtype, "depthwise_bn", activation=nn.silu)(y)
        # Squeeze-and-excitation on the block's input width / 4, as torchvision does.
        s = jnp.mean(y, axis=(1, 2), keepdims=True)
        s = nn.silu(
            self.conv(
                self,
                s,
                name="se_reduce",
                features=max(1, c_in // 4),
                kernel_size=1,
                use_bias=True,
                role="se",
                **kw,
            )
        )
        s = nn.sigmoid(
            self.conv(
                self,
                s,
                name="se_expand",
                features=hidden,
                kernel_size=1,
                use_bias=True,
                role="se",
                **kw,
            )
        )
        y = y * s
        y = self.conv(
            self, y, name="project", features=self.features, kernel_size=1, role="project", **kw
        )
        y = batch_norm(train, self.dtype, "project_bn")(y)
        if self.strides == 1 and c_in == self.features:
            y = StochasticDepth(self.drop_rate, name="stochastic_depth")(y, train) + x.astype(
                y.dtype
            )
        return y


@register_model(
    "efficientnet_b0",
    presets=PRESETS,
    input_shape=IMAGENET,
    description="torchvision EfficientNet-B0 (5.3M)",
)
class EfficientNet(nn.Module):
    """EfficientNet (torchvision layout): 3x3/2 stem (BN, SiLU), MBConv stages, 1x1 head conv to
    4x the last width (BN, SiLU), global average pool, dropout, dense.

    Attributes:
      num_classes: output classes.
      width_mult, depth_mult: compound scaling (B0: 1.0, 1.0); channels rounded to multiples
        of 8, repeats rounded up, as torchvision does.
      cfg: the (expand, kernel, stride, channels, repeats) stage table.
      stochastic_depth_rate: drop probability of the last block; block i of N drops with
        ``rate * i / N`` (i from 0).
      dropout_rate: dropout before the classifier (B0: 0.2).
      conv, dtype: conv factory and compute dtype.
    """

    num_classes: int
    width_mult: float = 1.0
    depth_mult: float = 1.0
    cfg: tuple[tuple[int, int, int, int, int], ...] = B0_CFG
    stochastic_depth_rate: float = 0.2
    dropout_rate: float = 0.2
    conv: ConvFactory = ConvFactory()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        def width(channels: int) -> int:
            return make_divisible(channels * self.width_mult)

        repeats = [int(math.ceil(n * self.depth_mult)) for *_, n in self.cfg]
        total = sum(repeats)
        x = self.conv(
            self,
            x,
            name="stem",
            features=width(32),
            kernel_size=3,
            strides=2,
            role="stem",
            kernel_init=kaiming_fan_out,
        )
        x = batch_norm(train, self.dtype, "stem_bn", activation=nn.silu)(x)
        index = 0
        for (ratio, k, s, c, _), n in zip(self.cfg, repeats):
            for i in range(n):
                x = MBConv(
                    width(c),
                    ratio,
                    k,
                    s if i == 0 else 1,
                    self.stochastic_depth_rate * index / total,
                    index + 1,
                    self.conv,
                    self.dtype,
                    name=f"block_{index + 1}",
                )(x, train)
                index += 1
        x = self.conv(
            self,
            x,
            name="head",
            features=4 * x.shape[-1],
            kernel_size=1,
            role="head",
            kernel_init=kaiming_fan_out,
        )
        x = batch_norm(train, self.dtype, "head_bn", activation=nn.silu)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(global_avg_pool(x))
        # torchvision: Linear weights uniform in +-1/sqrt(out_features), zero bias.
        bound = 1.0 / math.sqrt(self.num_classes)
        return classifier(x, self.num_classes, self.dtype, kernel_init=_symmetric_uniform(bound))


def _symmetric_uniform(bound: float):
    """U(-bound, bound) initializer."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
