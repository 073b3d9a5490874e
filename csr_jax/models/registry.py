"""Model registry: every backbone by name, ordinary or CSR, from one call.

    model = create('mobilenetv2_cifar', num_classes=10, csr='reference')
    variables = model.init({'params': k1, 'dropout': k2}, x, train=False)

``csr`` is None (ordinary convs), a preset name (see :func:`list_presets`), a
:class:`~csr_jax.policy.CSRPolicy`, or its dict form (as stored in a config). A policy is checked
against the model once, with an abstract ``jax.eval_shape`` init: a rule that decides no conv
raises :class:`~csr_jax.policy.PolicyError` instead of silently leaving the network ordinary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from csr_jax.models.densenet import DenseNet
from csr_jax.models.efficientnet import EfficientNet
from csr_jax.models.layers import ConvFactory
from csr_jax.models.mobilenetv2 import MobileNetV2
from csr_jax.models.resnet import CifarResNet, ImageNetResNet
from csr_jax.models.vgg import VGG
from csr_jax.policy import (
    ConvSite,
    CSRPolicy,
    Decision,
    check_coverage,
    decide,
    get_preset,
    preset_names,
    preset_reasons,
    trace_decisions,
)

__all__ = [
    "ModelSpec",
    "conv_plan",
    "create",
    "default_input_shape",
    "describe_presets",
    "get_policy",
    "list_models",
    "list_presets",
]

CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered backbone: its linen class with fixed settings, input shape, preset family."""

    module: Callable[..., nn.Module]
    fixed: Mapping[str, Any]
    input_shape: tuple[int, int, int]
    family: str
    description: str


_MODELS: dict[str, ModelSpec] = {
    "vgg16_cifar": ModelSpec(VGG, {"head": "cifar"}, CIFAR, "vgg", "VGG-16 with BN, CIFAR head (14.7M)"),
    "vgg16_bn": ModelSpec(VGG, {"head": "imagenet"}, IMAGENET, "vgg", "torchvision vgg16_bn (138.4M)"),
    **{
        f"resnet{6 * n + 2}": ModelSpec(CifarResNet, {"blocks_per_stage": n}, CIFAR, "resnet_cifar",
                                       f"CIFAR ResNet-{6 * n + 2}, option-A shortcuts")
        for n in (3, 5, 7, 9, 18)
    },
    "resnet50": ModelSpec(ImageNetResNet, {"stage_sizes": (3, 4, 6, 3)}, IMAGENET, "resnet_imagenet",
                          "torchvision ResNet-50 (25.6M)"),
    "densenet40": ModelSpec(DenseNet, {"depth": 40, "growth_rate": 12}, CIFAR, "densenet",
                            "DenseNet-40, growth 12, CIFAR (1.0M)"),
    "mobilenetv2_cifar": ModelSpec(MobileNetV2, {"variant": "cifar"}, CIFAR, "mobilenetv2_cifar",
                                   "the CSR reference's CIFAR MobileNetV2 (2.2M)"),
    "mobilenetv2": ModelSpec(MobileNetV2, {"variant": "imagenet"}, IMAGENET, "mobilenetv2_imagenet",
                             "torchvision MobileNetV2 (3.5M)"),
    "efficientnet_b0": ModelSpec(EfficientNet, {}, IMAGENET, "efficientnet", "torchvision EfficientNet-B0 (5.3M)"),
}


def _spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; valid models: {list_models()}.")
    return _MODELS[name]


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def default_input_shape(name: str) -> tuple[int, int, int]:
    """(H, W, C) the model is designed for: 32x32x3 for CIFAR nets, 224x224x3 for ImageNet nets."""
    return _spec(name).input_shape


def list_presets(name: str) -> list[str]:
    """CSR preset names of a model; ``t{N}`` works for any N >= 1, the listed ones are examples."""
    return preset_names(_spec(name).family)


def describe_presets(name: str) -> dict[str, str]:
    """Why each preset of a model picks its layers: ``{'reference': ..., 't{N}': ...}``."""
    return preset_reasons(_spec(name).family)


def get_policy(name: str, csr: None | str | CSRPolicy | Mapping[str, Any]) -> CSRPolicy | None:
    """Turn a ``csr`` argument (None, preset name, policy or its dict form) into a policy."""
    if csr is None or isinstance(csr, CSRPolicy):
        return csr
    if isinstance(csr, str):
        return get_preset(_spec(name).family, csr, model=name)
    if isinstance(csr, Mapping):
        return CSRPolicy.from_dict(csr)
    if hasattr(csr, "to_dict"):  # e.g. an ml_collections.ConfigDict holding the dict form
        return CSRPolicy.from_dict(csr.to_dict())
    raise TypeError(f"csr must be None, a preset name, a CSRPolicy or its dict form; got {type(csr).__name__}.")


def conv_plan(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[ConvSite, Decision]]:
    """Every conv the model creates, in order, with its policy decision (T, deciding rule).

    The sites come from an abstract (``jax.eval_shape``) init of the same backbone with ordinary
    convs, which is several times cheaper to trace than the CSR network and has the same convs
    (paths, roles, blocks, channels); the policy then decides each site, exactly as it does while
    the CSR network is built. Raises :class:`~csr_jax.policy.PolicyError` where the policy asks
    for an impossible layer.
    """
    conv = getattr(model, "conv", None)
    if not isinstance(conv, ConvFactory):
        raise TypeError(f"conv_plan needs a backbone built with a ConvFactory, got {type(model).__name__}.")
    ordinary = model.clone(conv=dataclasses.replace(conv, policy=None))
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    init = functools.partial(ordinary.init, train=False)
    with trace_decisions() as trace:
        jax.eval_shape(init, {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    return [(site, decide(conv.policy, site)) for site, _ in trace]


def create(
    name: str,
    *,
    num_classes: int,
    csr: None | str | CSRPolicy | Mapping[str, Any] = None,
    dtype: Any = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered backbone, ordinary (``csr=None``) or with CSR convs.

    Args:
      name: one of :func:`list_models`.
      num_classes: output classes.
      csr: None, a preset name from :func:`list_presets` (or ``t{N}``), a ``CSRPolicy`` or its dict.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32. Logits are float32.
      **overrides: fields of the backbone's module (e.g. ``width_mult=0.5``, ``widths=(8, 16, 32)``)
        and ``unroll`` (the CSR hidden-scan unroll factor).

    Returns:
      a ``flax.linen.Module`` called as ``model(x, train)`` on NHWC input.
    """
    spec = _spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    policy = get_policy(name, csr)
    unroll = overrides.pop("unroll", None)
    valid = {f.name for f in dataclasses.fields(spec.module)} - {"parent", "name", "conv", "dtype", "num_classes"}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(f"{name} does not take override(s) {bad}; valid: {sorted(valid | {'unroll'})}.")
    fixed = sorted(set(overrides) & set(spec.fixed))
    if fixed:
        raise TypeError(f"{fixed} define {name} itself; pick another registered model instead.")
    conv = ConvFactory(policy=policy, dtype=dtype, unroll=unroll)
    model = spec.module(num_classes=num_classes, conv=conv, dtype=dtype, **spec.fixed, **overrides)
    if policy is not None:
        check_coverage(policy, conv_plan(model, spec.input_shape), model_name=name)
    return model

