"""VGG-16 with BatchNorm (configuration D), for CIFAR (32x32) and ImageNet (torchvision ``vgg16_bn``).

Block numbering for CSR policies: the five conv stages separated by max-pooling are blocks 1..5
(Keras' ``block{b}_conv{i}`` naming); the first conv of block 1 has role ``stem``, every other conv
role ``conv3x3``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

from csr_jax.models.layers import (
    ConvFactory,
    adaptive_avg_pool,
    batch_norm,
    classifier,
    kaiming_fan_out,
    torch_default_init,
)
from csr_jax.models.registry import CIFAR, IMAGENET, register_model
from csr_jax.policy import Presets, TPreset

Array = jax.Array

PRESETS = Presets(
    t=TPreset(
        always=("conv3x3",),
        why="Every 3x3 conv after the stem becomes CSR. They are square or doubling convs "
        "(C -> C or C -> 2C), where CSR costs (C_in C_out + C_out^2) / T^2, i.e. 2/T^2 to 3/T^2 "
        "of the conv, and they hold all conv parameters but the stem's 1.7K. The stem (3 input "
        "channels) would save nothing. The fully connected classifier stays dense, so for the "
        "ImageNet VGG-16-BN, whose three FC layers hold 89% of the weights, the total falls "
        "by at most ~11%.",
    )
)


@register_model(
    "vgg16_cifar",
    presets=PRESETS,
    input_shape=CIFAR,
    description="VGG-16 with BN, CIFAR head (14.7M)",
    head="cifar",
)
@register_model(
    "vgg16_bn",
    presets=PRESETS,
    input_shape=IMAGENET,
    description="torchvision vgg16_bn (138.4M)",
    head="imagenet",
)
class VGG(nn.Module):
    """VGG with BatchNorm: ``depths[b]`` 3x3 convs (with bias) of ``widths[b]`` channels per stage,
    each followed by BN and ReLU, 2x2 max-pooling after each stage.

    Attributes:
      num_classes: output classes.
      head: ``'cifar'``: flatten the 1x1x512 map of a 32x32 input into one dense layer (the
        CIFAR VGG-16, 14.7M parameters); ``'imagenet'``: torchvision's adaptive 7x7 average pool
        and three dense layers with ReLU and dropout (138.4M parameters).
      widths, depths: channels and number of convs of the five stages (configuration D).
      fc_width: width of the two hidden dense layers of the ImageNet head.
      dropout_rate: dropout of the ImageNet head.
      conv: the conv factory (ordinary or CSR).
      dtype: compute dtype.
    """

    num_classes: int
    head: str = "cifar"
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    depths: tuple[int, ...] = (2, 2, 3, 3, 3)
    fc_width: int = 4096
    dropout_rate: float = 0.5
    conv: ConvFactory = ConvFactory()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.head not in ("cifar", "imagenet"):
            raise ValueError(f"VGG.head must be 'cifar' or 'imagenet', got {self.head!r}.")
        imagenet = self.head == "imagenet"
        # torchvision initialises convs with kaiming_normal(fan_out); the CIFAR VGG keeps PyTorch's default.
        init = kaiming_fan_out if imagenet else torch_default_init
        for b, (width, depth) in enumerate(zip(self.widths, self.depths), start=1):
            for i in range(1, depth + 1):
                name = f"block{b}_conv{i}"
                x = self.conv(
                    self,
                    x,
                    name=name,
                    features=width,
                    kernel_size=3,
                    padding=1,
                    use_bias=True,
                    role="stem" if (b, i) == (1, 1) else "conv3x3",
                    block=b,
                    kernel_init=init,
                )
                x = batch_norm(train, self.dtype, f"{name}_bn", activation=nn.relu)(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        if not imagenet:
            return classifier(x.reshape(x.shape[0], -1), self.num_classes, self.dtype)
        x = adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
        dense_init = nn.initializers.normal(0.01)  # torchvision: normal(0, 0.01), zero bias
        for i in (1, 2):
            x = nn.Dense(self.fc_width, dtype=self.dtype, kernel_init=dense_init, name=f"fc{i}")(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return classifier(x, self.num_classes, self.dtype, kernel_init=dense_init)
