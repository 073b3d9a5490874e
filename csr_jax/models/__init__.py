"""The paper's seven backbones (VGG-16, ResNet-20..110/50, DenseNet-40, MobileNetV2, EfficientNet-B0),
each buildable with ordinary or CSR convolutions through :func:`create`.

Each backbone file registers its models and their CSR presets where it defines them
(:func:`register_model`); importing it below is what makes them available by name.
"""

# Backbones: one import per file registers its models.
from csr_jax.models.densenet import DenseNet
from csr_jax.models.efficientnet import EfficientNet
from csr_jax.models.layers import ConvFactory
from csr_jax.models.mobilenetv2 import MobileNetV2
from csr_jax.models.registry import (
    abstract_init,
    conv_plan,
    create,
    default_input_shape,
    describe_presets,
    get_policy,
    list_models,
    list_presets,
    register_model,
)
from csr_jax.models.resnet import CifarResNet, ImageNetResNet
from csr_jax.models.vgg import VGG

__all__ = [
    "CifarResNet",
    "ConvFactory",
    "DenseNet",
    "EfficientNet",
    "ImageNetResNet",
    "MobileNetV2",
    "VGG",
    "abstract_init",
    "conv_plan",
    "create",
    "default_input_shape",
    "describe_presets",
    "get_policy",
    "list_models",
    "list_presets",
    "register_model",
]
