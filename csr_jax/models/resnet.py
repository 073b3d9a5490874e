"""ResNets: the CIFAR family of He et al. (2016) and the ImageNet ResNet-50 (torchvision layout).

Block numbering for CSR policies: residual blocks are numbered 1..N over all stages in order
(ResNet-56: 27 basic blocks; ResNet-50: 16 bottlenecks). The stem conv has no block index.
Roles: ``stem``; ``conv3x3`` for both convs of a basic block and the middle conv of a bottleneck;
``reduce`` / ``expand`` for the bottleneck's first / last 1x1 conv; ``downsample`` for the 1x1
projection shortcut.
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
    kaiming_fan_out,
    torch_default_init,
)
from csr_jax.models.registry import CIFAR, IMAGENET, register_model
from csr_jax.policy import Presets, TPreset

Array = jax.Array

CIFAR_PRESETS = Presets(
    t=TPreset(
        always=("conv3x3",),
        why="Every 3x3 conv of every basic block becomes CSR: with the parameter-free (option A) "
        "shortcuts they hold all of the network's weights except the 3->16 stem (432), the "
        "classifier (650) and BatchNorm. Square convs cost 2/T^2 of the ordinary conv under CSR.",
    )
)

IMAGENET_PRESETS = Presets(
    t=TPreset(
        always=("conv3x3", "reduce"),
        where_smaller=("expand", "downsample"),
        why="All bottleneck convs and projection shortcuts become CSR, the 7x7 stem and the FC "
        "layer stay. The 3x3 convs (square, 2/T^2) and the narrowing 1x1 'reduce' convs "
        "(4C -> C, 1.25/T^2) always shrink; the widening 1x1 'expand' convs (C -> 4C, 5/T^2) "
        "and shortcuts (2C or 4C wider, 3/T^2 to 5/T^2) only shrink for T >= 3, so they are "
        "replaced only where CSR is smaller. The 2M-parameter FC layer bounds the reduction.",
    )
)


def option_a_shortcut(x: Array, features: int, strides: int) -> Array:
    """He et al.'s parameter-free shortcut: subsample spatially, zero-pad the new channels
    (half on each side, as the common CIFAR implementations do)."""
    if strides != 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"Option-A shortcut cannot narrow channels ({x.shape[-1]} -> {features}).")
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ReLU after the first and after the residual sum.

    ``zero_init_residual`` starts the second BN's scale at 0, so the block starts as the identity
    (Goyal et al. 2017; torchvision's flag of the same name). Off by default.
    """

    features: int
    strides: int
    block: int
    conv: ConvFactory
    dtype: Any = None
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        common = dict(kernel_size=3, role="conv3x3", block=self.block, kernel_init=kaiming_fan_in)
        y = self.conv(self, x, name="conv1", features=self.features, strides=self.strides, **common)
        y = batch_norm(train, self.dtype, "bn1", activation=nn.relu)(y)
        y = self.conv(self, y, name="conv2", features=self.features, **common)
        y = batch_norm(train, self.dtype, "bn2", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + option_a_shortcut(x, self.features, self.strides).astype(y.dtype))


class CifarResNet(nn.Module):
    """The 6n+2-layer CIFAR ResNet: 3x3 stem (16), three stages of n basic blocks (16/32/64
    channels, stride 2 entering stages 2 and 3), global average pool, dense.

    Attributes:
      num_classes: output classes.
      blocks_per_stage: n (ResNet-20: 3, -32: 5, -44: 7, -56: 9, -110: 18).
      widths: channels of the stem/first stage and of the three stages.
      conv, dtype: conv factory and compute dtype.
      zero_init_residual: start every block's last BN scale at 0 (each block starts as the
        identity and the initial loss is close to ln(num_classes)); off by default, set by the
        digits config (experiments/configs/digits.py) for a stable short run.
    """

    num_classes: int
    blocks_per_stage: int = 9
    widths: tuple[int, int, int] = (16, 32, 64)
    conv: ConvFactory = ConvFactory()
    dtype: Any = None
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = self.conv(
            self,
            x,
            name="stem",
            features=self.widths[0],
            kernel_size=3,
            role="stem",
            kernel_init=kaiming_fan_in,
        )
        x = batch_norm(train, self.dtype, "stem_bn", activation=nn.relu)(x)
        index = 0
        for stage, width in enumerate(self.widths):
            for i in range(self.blocks_per_stage):
                index += 1
                strides = 2 if stage > 0 and i == 0 else 1
                x = BasicBlock(
                    width,
                    strides,
                    index,
                    self.conv,
                    self.dtype,
                    self.zero_init_residual,
                    name=f"block_{index}",
                )(x, train)
        return classifier(
            global_avg_pool(x), self.num_classes, self.dtype, kernel_init=kaiming_fan_in
        )


for _n in (3, 5, 7, 9, 18):
    register_model(
        f"resnet{6 * _n + 2}",
        presets=CIFAR_PRESETS,
        input_shape=CIFAR,
        description=f"CIFAR ResNet-{6 * _n + 2}, option-A shortcuts",
        blocks_per_stage=_n,
    )(CifarResNet)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (v1.5): 1x1 reduce, 3x3 (carries the stride), 1x1
    expand to 4x; a 1x1 conv + BN projection shortcut when the shape changes."""

    width: int
    strides: int
    block: int
    conv: ConvFactory
    dtype: Any = None
    expansion: int = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        out = self.width * self.expansion
        kw = dict(block=self.block, kernel_init=kaiming_fan_out)
        y = self.conv(
            self, x, name="conv1", features=self.width, kernel_size=1, role="reduce", **kw
        )
        y = batch_norm(train, self.dtype, "bn1", activation=nn.relu)(y)
        y = self.conv(
            self,
            y,
            name="conv2",
            features=self.width,
            kernel_size=3,
            strides=self.strides,
            role="conv3x3",
            **kw,
        )
        y = batch_norm(train, self.dtype, "bn2", activation=nn.relu)(y)
        y = self.conv(self, y, name="conv3", features=out, kernel_size=1, role="expand", **kw)
        y = batch_norm(train, self.dtype, "bn3")(y)
        if self.strides != 1 or x.shape[-1] != out:
            x = self.conv(
                self,
                x,
                name="downsample",
                features=out,
                kernel_size=1,
                strides=self.strides,
                role="downsample",
                **kw,
            )
            x = batch_norm(train, self.dtype, "downsample_bn")(x)
        return nn.relu(y + x.astype(y.dtype))


@register_model(
    "resnet50",
    presets=IMAGENET_PRESETS,
    input_shape=IMAGENET,
    description="torchvision ResNet-50 (25.6M)",
    stage_sizes=(3, 4, 6, 3),
)
class ImageNetResNet(nn.Module):
    """torchvision's bottleneck ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages of bottlenecks
    (stride 2 entering stages 2..4), global average pool, dense.

    Attributes:
      num_classes: output classes.
      stage_sizes: bottlenecks per stage (ResNet-50: (3, 4, 6, 3)).
      widths: bottleneck widths of the four stages (outputs are 4x these); ``widths[0]`` is
        also the stem's width.
      conv, dtype: conv factory and compute dtype.
    """

    num_classes: int
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    conv: ConvFactory = ConvFactory()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = self.conv(
            self,
            x,
            name="stem",
            features=self.widths[0],
            kernel_size=7,
            strides=2,
            padding=3,
            role="stem",
            kernel_init=kaiming_fan_out,
        )
        x = batch_norm(train, self.dtype, "stem_bn", activation=nn.relu)(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        index = 0
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for i in range(size):
                index += 1
                strides = 2 if stage > 0 and i == 0 else 1
                x = Bottleneck(width, strides, index, self.conv, self.dtype, name=f"block_{index}")(
                    x, train
                )
        return classifier(
            global_avg_pool(x), self.num_classes, self.dtype, kernel_init=torch_default_init
        )
