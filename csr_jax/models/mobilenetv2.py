"""MobileNetV2: the CSR reference's CIFAR-10 variant and torchvision's ImageNet layout.

Block numbering for CSR policies: the 17 inverted-residual blocks are blocks 1..17 (1-based, in
order, as in the paper's "blocks 6..17"); stem and head have no block index. Roles: ``stem``,
``expand`` (1x1 widening), ``depthwise`` (3x3), ``project`` (1x1 narrowing), ``head`` (1x1 to
1280).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

from csr_jax.models.layers import (
    ConvFactory,
    batch_norm,
    classifier,
    global_avg_pool,
    kaiming_fan_out,
    make_divisible,
    torch_default_init,
)
from csr_jax.models.registry import CIFAR, IMAGENET, register_model
from csr_jax.models.torch_compat import torch_batch_norm, torch_default_bias_init
from csr_jax.policy import CSRPolicy, Presets, Rule, TPreset

Array = jax.Array

T_PRESET = TPreset(
    always=("project",),
    where_smaller=("expand", "head"),
    why="All 1x1 convs of the inverted residuals and the 1x1 head conv (97% of the conv "
    "weights) become CSR where it pays: the narrowing 'project' convs (6C -> C', CSR costs "
    "1.2/T^2 to 1.3/T^2 of the conv) always; the widening 'expand' (C -> 6C, 7/T^2) and "
    "head (320 -> 1280, 5/T^2) convs only where CSR is smaller, i.e. from T = 3. The stem "
    "and the depthwise convs stay ordinary, as in the authors' configuration; the dense "
    "classifier (1.28M of 3.5M weights in the ImageNet net) bounds the reduction.",
)

CIFAR_PRESETS = Presets(
    t=T_PRESET,
    named={
        "reference": CSRPolicy(
            rules=(Rule(3, roles=("expand",)), Rule(4, roles=("project",))),
            name="reference",
            description=(
                "The authors' configuration for the CIFAR-10 MobileNetV2 (their public notebook): in "
                "each of the 17 inverted-residual blocks the 1x1 expand conv becomes CSR with T=3 and "
                "the 1x1 project conv CSR with T=4, without bias; the stem, the depthwise 3x3 convs "
                "and the 1x1 head stay ordinary convs."
            ),
        )
    },
)

IMAGENET_PRESETS = Presets(
    t=T_PRESET,
    named={
        "reference": CSRPolicy(
            rules=(
                Rule(3, roles=("expand",), blocks=(6, 17)),
                Rule(4, roles=("project",), blocks=(6, 17)),
            ),
            name="reference",
            description=(
                "The authors' configuration for the ImageNet MobileNetV2 (torchvision layout): in "
                "inverted-residual blocks 6..17 (1-based) the 1x1 expand conv becomes CSR with T=3 "
                "and the 1x1 project conv CSR with T=4, without bias; blocks 1..5, the stem, the "
                "depthwise convs and the head stay ordinary."
            ),
        )
    },
)

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
IMAGENET_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# The reference CIFAR-10 variant keeps 32x32 resolution longer: stride 1 in the stem and in the
# 24- and 32-channel stages, so only the 64- and 160-channel stages downsample (32 -> 8).
CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 1),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _batch_norm(torch_stats: bool):
    """``layers.batch_norm``, or its PyTorch-running-variance twin (``torch_compat``)."""
    return torch_batch_norm if torch_stats else batch_norm


class InvertedResidual(nn.Module):
    """1x1 expand (BN, ReLU6) -> 3x3 depthwise (BN, ReLU6) -> 1x1 project (BN), plus the input when
    the stride is 1 and the width is unchanged."""

    features: int
    strides: int
    expand_ratio: int
    block: int
    conv: ConvFactory
    always_expand: bool = False
    dtype: Any = None
    kernel_init: Any = kaiming_fan_out
    torch_batchnorm_stats: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c_in = x.shape[-1]
        hidden = int(round(c_in * self.expand_ratio))
        kw = dict(block=self.block, kernel_init=self.kernel_init)
        batch_norm = _batch_norm(self.torch_batchnorm_stats)
        y = x
        # torchvision drops the expand conv when t == 1; the CSR reference keeps it (32 -> 32).
        if self.expand_ratio != 1 or self.always_expand:
            y = self.conv(
                self, y, name="expand", features=hidden, kernel_size=1, role="expand", **kw
            )
            y = batch_norm(train, self.dtype, "expand_bn", activation=nn.relu6)(y)
        y = self.conv(
            self,
            y,
            name="depthwise",
            features=hidden,
            kernel_size=3,
            strides=self.strides,
            groups=hidden,
            role="depthwise",
            **kw,
        )
        y = batch_norm(train, self.dtype, "depthwise_bn", activation=nn.relu6)(y)
        y = self.conv(
            self, y, name="project", features=self.features, kernel_size=1, role="project", **kw
        )
        y = batch_norm(train, self.dtype, "project_bn")(y)
        if self.strides == 1 and c_in == self.features:
            y = y + x.astype(y.dtype)
        return y


@register_model(
    "mobilenetv2_cifar",
    presets=CIFAR_PRESETS,
    input_shape=CIFAR,
    description="the CSR reference's CIFAR MobileNetV2 (2.2M)",
    variant="cifar",
)
@register_model(
    "mobilenetv2",
    presets=IMAGENET_PRESETS,
    input_shape=IMAGENET,
    description="torchvision MobileNetV2 (3.5M)",
    variant="imagenet",
)
class MobileNetV2(nn.Module):
    """Stem 3x3 conv (BN, ReLU6), 17 inverted residuals, 1x1 head conv (BN, ReLU6), global
    average pool, dropout, dense.

    Attributes:
      num_classes: output classes.
      variant: ``'imagenet'`` (torchvision: stem stride 2, t=1 block without expand conv,
        dropout 0.2, torchvision inits) or ``'cifar'`` (the CSR reference: stem stride 1,
        :data:`CIFAR_CFG` strides, every block with an expand conv, no dropout, the authors'
        inits). Inits: every ordinary conv N(0, sqrt(2 / (k * k * C_out))) in both variants
        (the authors' loop over their convs, and torchvision's kaiming_normal_ fan_out: the same
        law; stem std 0.083, last depthwise std 0.015 in the CIFAR net); CSR kernels keep
        PyTorch's default U(+-1/sqrt(fan_in)) (``CSRConv``'s); the classifier is PyTorch's
        ``nn.Linear`` default in the CIFAR net (weight and bias U(+-1/sqrt(fan_in)), as the
        authors leave it) and torchvision's N(0, 0.01) weight, zero bias in the ImageNet net.
      width_mult: channel multiplier, channels rounded to multiples of 8 as in torchvision.
      cfg: override of the (t, c, n, s) table; None takes the variant's.
      dropout_rate: None takes the variant's.
      torch_batchnorm_stats: update the BatchNorm running variance with the unbiased batch
        variance, as PyTorch does (``torch_compat.TorchStatsBatchNorm``); changes eval only.
      conv, dtype: conv factory and compute dtype.
    """

    num_classes: int
    variant: str = "imagenet"
    width_mult: float = 1.0
    cfg: tuple[tuple[int, int, int, int], ...] | None = None
    dropout_rate: float | None = None
    torch_batchnorm_stats: bool = False
    conv: ConvFactory = ConvFactory()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.variant not in ("cifar", "imagenet"):
            raise ValueError(
                f"MobileNetV2.variant must be 'cifar' or 'imagenet', got {self.variant!r}."
            )
        cifar = self.variant == "cifar"
        cfg = self.cfg if self.cfg is not None else (CIFAR_CFG if cifar else IMAGENET_CFG)
        init = kaiming_fan_out  # N(0, sqrt(2 / (k * k * C_out))): see the class docstring.
        batch_norm = _batch_norm(self.torch_batchnorm_stats)
        dropout = self.dropout_rate if self.dropout_rate is not None else (0.0 if cifar else 0.2)
        x = self.conv(
            self,
            x,
            name="stem",
            features=make_divisible(32 * self.width_mult),
            kernel_size=3,
            strides=1 if cifar else 2,
            role="stem",
            kernel_init=init,
        )
        x = batch_norm(train, self.dtype, "stem_bn", activation=nn.relu6)(x)
        index = 0
        for t, c, n, s in cfg:
            for i in range(n):
                index += 1
                x = InvertedResidual(
                    make_divisible(c * self.width_mult),
                    s if i == 0 else 1,
                    t,
                    index,
                    self.conv,
                    always_expand=cifar,
                    dtype=self.dtype,
                    kernel_init=init,
                    torch_batchnorm_stats=self.torch_batchnorm_stats,
                    name=f"block_{index}",
                )(x, train)
        head = make_divisible(1280 * max(1.0, self.width_mult))
        x = self.conv(
            self, x, name="head", features=head, kernel_size=1, role="head", kernel_init=init
        )
        x = batch_norm(train, self.dtype, "head_bn", activation=nn.relu6)(x)
        x = nn.Dropout(dropout, deterministic=not train)(global_avg_pool(x))
        if cifar:
            return classifier(
                x,
                self.num_classes,
                self.dtype,
                kernel_init=torch_default_init,
                bias_init=torch_default_bias_init(x.shape[-1]),
            )
        return classifier(x, self.num_classes, self.dtype, kernel_init=nn.initializers.normal(0.01))
