"""The benchmarked networks written in plain PyTorch, for the peer benchmark (``torch_peer.py``).

Written from the networks' published definitions, not translated from csr_jax, so that the peer
benchmark compares csr_jax with what a PyTorch user would run:

* :class:`MobileNetV2Cifar`: the CSR authors' CIFAR-10 MobileNetV2 (stride-1 stem, every block
  with a 1x1 expand conv, only the 64- and 160-channel stages downsample, residual add where the
  stride is 1 and the width unchanged, 1x1 head to 1280, no dropout): 2,237,770 parameters.
* :class:`ResNetCifar`: He et al. (2016)'s 6n+2 CIFAR ResNet with parameter-free (option A)
  shortcuts; n = 3 is ResNet-20, 269,722 parameters.
* :class:`CSRConv2d`: Channel-Split Recurrent Convolution as a straightforward step-by-step loop
  over the T channel chunks, as the authors' PyTorch code runs it: the channels are extended by
  wrap-around to T * ceil(C_in/T) and split into T chunks; ``h_1 = U * x_1``, then
  ``h_t = alpha * relu(U * x_t + V * h_{t-1}) + (1 - beta) * V * h_{t-1}``; the output is the
  concatenation of h_1..h_T cut to C_out channels. U has the layer's stride and padding, V is
  stride 1 with (k-1)//2 padding; alpha and beta start at 0.5.

CSR placement follows csr_jax's presets: MobileNetV2 ``reference`` makes every block's expand
conv CSR with T=3 and its project conv with T=4 (no bias); ResNet ``t{N}`` makes both 3x3 convs
of every basic block CSR with T=N. Convs have no bias (BatchNorm follows each). Initialisation
is PyTorch's default: it does not change the speed being measured.

Importing this module needs torch; csr_jax itself never imports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CSRConv2d(nn.Module):
    """CSR-Conv, one Python-level step per channel chunk (the reference's formulation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        steps: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ):
        super().__init__()
        if not 1 <= steps <= min(in_channels, out_channels):
            raise ValueError(
                f"CSRConv2d: steps must be in 1..min(C_in, C_out) = {min(in_channels, out_channels)}, "
                f"got {steps}."
            )
        if steps > 1 and kernel_size % 2 == 0:
            raise ValueError(
                f"CSRConv2d: kernel_size must be odd when steps > 1, got {kernel_size}."
            )
        self.in_channels, self.out_channels, self.steps = in_channels, out_channels, steps
        self.g_in = -(-in_channels // steps)
        self.g_out = -(-out_channels // steps)
        self.input_conv = nn.Conv2d(self.g_in, self.g_out, kernel_size, stride, padding, bias=bias)
        if steps > 1:
            self.hidden_conv = nn.Conv2d(
                self.g_out, self.g_out, kernel_size, 1, (kernel_size - 1) // 2, bias=bias
            )
            self.alpha = nn.Parameter(torch.tensor(0.5))
            self.beta = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.steps * self.g_in
        if total > self.in_channels:
            reps = -(-total // self.in_channels)
            x = torch.cat([x] * reps, dim=1)[:, :total]
        chunks = torch.split(x, self.g_in, dim=1)
        h = self.input_conv(chunks[0])
        outputs = [h]
        for t in range(1, self.steps):
            r = self.hidden_conv(h)
            h = self.alpha * F.relu(self.input_conv(chunks[t]) + r) + (1 - self.beta) * r
            outputs.append(h)
        return torch.cat(outputs, dim=1)[:, : self.out_channels]


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    steps: int | None = None,
) -> nn.Module:
    """An ordinary bias-free conv with 'same'-style padding, or CSR-Conv with ``steps`` chunks."""
    padding = (kernel_size - 1) // 2
    if steps is None:
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
    return CSRConv2d(in_channels, out_channels, kernel_size, steps, stride, padding)


# (expansion t, output channels c, repeats n, first stride s) of the CIFAR-10 MobileNetV2.
MOBILENETV2_CIFAR_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 1),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1 project -> BN (+ input)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int,
        stride: int,
        expand_steps: int | None,
        project_steps: int | None,
    ):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.layers = nn.Sequential(
            conv(in_channels, hidden, 1, steps=expand_steps),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            conv(hidden, hidden, 3, stride, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            conv(hidden, out_channels, 1, steps=project_steps),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class MobileNetV2Cifar(nn.Module):
    """The CIFAR-10 MobileNetV2; ``csr=True`` is the authors' CSR configuration (expand T=3,
    project T=4 in all 17 blocks; stem, depthwise convs and head stay ordinary)."""

    def __init__(self, num_classes: int = 10, csr: bool = False):
        super().__init__()
        layers: list[nn.Module] = [conv(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        channels = 32
        for t, c, n, s in MOBILENETV2_CIFAR_CFG:
            for i in range(n):
                layers.append(
                    InvertedResidual(
                        channels, c, t, s if i == 0 else 1, 3 if csr else None, 4 if csr else None
                    )
                )
                channels = c
        layers += [conv(channels, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, ReLU; option-A shortcut (subsample, zero-pad channels half each side)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, steps: int | None):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, stride, steps=steps)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, steps=steps)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(y + shortcut)


class ResNetCifar(nn.Module):
    """The 6n+2 CIFAR ResNet (n=3: ResNet-20); ``steps=N`` makes every block conv CSR with T=N."""

    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10, steps: int | None = None):
        super().__init__()
        layers: list[nn.Module] = [conv(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(channels, width, 2 if stage > 0 and i == 0 else 1, steps))
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def count_params(model: nn.Module) -> int:
    """Trainable scalars (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
