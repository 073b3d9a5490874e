"""Model registry: every backbone by name, ordinary or CSR, from one call.

    model = create('mobilenetv2_cifar', num_classes=10, csr='reference')
    variables = model.init({'params': k1, 'dropout': k2}, x, train=False)

Each backbone file registers its models where it defines them, together with their presets
(:class:`~csr_jax.policy.Presets`), timm-style::

    @register_model("resnet20", presets=PRESETS, input_shape=CIFAR, description="...", blocks_per_stage=3)
    class CifarResNet(nn.Module): ...

so adding a backbone is one file plus its import in ``csr_jax/models/__init__.py``
(docs/ARCHITECTURE.md has a worked example).

``csr`` is None (ordinary convs), a preset name (see :func:`list_presets`), a
:class:`~csr_jax.policy.CSRPolicy`, its dict form, or that as JSON text or a ``.json`` file path
(as a config carries it). A policy is checked against the model once, with an abstract
``jax.eval_shape`` init: a rule that decides no conv raises
:class:`~csr_jax.policy.PolicyError` instead of silently leaving the network ordinary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from csr_jax.models.layers import ConvFactory
from csr_jax.policy import (
    ConvSite,
    CSRPolicy,
    Decision,
    Presets,
    check_coverage,
    decide,
    parse_csr,
    recording,
)

__all__ = [
    "CIFAR",
    "IMAGENET",
    "ModelSpec",
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

CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered backbone: its linen class with fixed settings, input shape and presets."""

    module: Callable[..., nn.Module]
    fixed: Mapping[str, Any]
    input_shape: tuple[int, int, int]
    presets: Presets
    description: str


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    presets: Presets,
    input_shape: tuple[int, int, int],
    description: str,
    **fixed: Any,
) -> Callable[[type], type]:
    """Class decorator: register ``name`` as the decorated backbone with the fields ``fixed``.

    Stack one decorator per model a class defines (``vgg16_cifar`` and ``vgg16_bn`` are one
    class), or call ``register_model(...)(Class)`` in a loop. ``presets`` are the model's CSR
    presets, ``input_shape`` the (H, W, C) it is designed for.
    """
    if name in _MODELS:
        raise ValueError(f"Model {name!r} is registered twice.")
    if not isinstance(presets, Presets):
        raise TypeError(f"register_model({name!r}): presets must be a csr_jax.policy.Presets.")

    def register(module: type) -> type:
        _MODELS[name] = ModelSpec(module, dict(fixed), tuple(input_shape), presets, description)
        return module

    return register


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
    return _spec(name).presets.names()


def describe_presets(name: str) -> dict[str, str]:
    """Why each preset of a model picks its layers: ``{'reference': ..., 't{N}': ...}``."""
    return _spec(name).presets.reasons()


def get_policy(name: str, csr: Any) -> CSRPolicy | None:
    """Turn a ``csr`` argument (None, preset name, policy, its dict, JSON text or file) into a policy."""
    csr = parse_csr(csr)
    if csr is None or isinstance(csr, CSRPolicy):
        return csr
    if isinstance(csr, str):
        return _spec(name).presets.get(csr, model=name)
    if isinstance(csr, Mapping):
        return CSRPolicy.from_dict(csr)
    if hasattr(csr, "to_dict"):  # e.g. an ml_collections.ConfigDict holding the dict form
        return CSRPolicy.from_dict(csr.to_dict())
    raise TypeError(
        f"csr must be None, a preset name, a CSRPolicy or its dict form; got {type(csr).__name__}."
    )


def _factory(model: nn.Module) -> ConvFactory:
    conv = getattr(model, "conv", None)
    if not isinstance(conv, ConvFactory):
        raise TypeError(
            f"Expected a backbone built with a ConvFactory, got {type(model).__name__}."
        )
    return conv


def _init_abstract(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[Any, list[tuple[ConvSite, Decision]]]:
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    init = functools.partial(model.init, train=False)
    with recording() as calls:
        variables = jax.eval_shape(
            init, {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x
        )
    return variables, calls


def conv_plan(
    model: nn.Module, input_shape: tuple[int, int, int]
) -> list[tuple[ConvSite, Decision]]:
    """Every conv the model creates, in order, with its policy decision (T, deciding rule).

    The sites come from an abstract (``jax.eval_shape``) init of the same backbone with ordinary
    convs, which is several times cheaper to trace than the CSR network and has the same convs
    (paths, roles, blocks, channels); the policy then decides each site, exactly as it does while
    the CSR network is built. Raises :class:`~csr_jax.policy.PolicyError` where the policy asks
    for an impossible layer.
    """
    conv = _factory(model)
    _, calls = _init_abstract(model.clone(conv=dataclasses.replace(conv, policy=None)), input_shape)
    return [(site, decide(conv.policy, site)) for site, _ in calls]


def abstract_init(model: nn.Module, input_shape: tuple[int, ...], *, name: str = "model") -> Any:
    """Abstract variables (``jax.ShapeDtypeStruct`` leaves) of a backbone, its policy checked.

    The one trace a training run needs before compiling: it gives the parameter shapes (for the
    optimizer and the state's shardings) and the record of every conv's decision, on which the
    policy's coverage is checked as :func:`create` would (build the model with ``check=False``).
    """
    variables, calls = _init_abstract(model, input_shape)
    policy = _factory(model).policy
    if policy is not None:
        check_coverage(policy, calls, model_name=name)
    return variables


def create(
    name: str,
    *,
    num_classes: int,
    csr: Any = None,
    dtype: Any = None,
    check: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Build a registered backbone, ordinary (``csr=None``) or with CSR convs.

    Args:
      name: one of :func:`list_models`.
      num_classes: output classes.
      csr: None, a preset name from :func:`list_presets` (or ``t{N}``), a ``CSRPolicy``, its dict,
        or the dict as JSON text or a ``.json`` file path.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32. Logits are float32.
      check: check that every rule of the policy decides some conv (one abstract trace of the
        ordinary network). Pass False when :func:`abstract_init` will run anyway: it checks too.
      **overrides: fields of the backbone's module (e.g. ``width_mult=0.5``, ``widths=(8, 16, 32)``),
        ``unroll`` (the CSR hidden-scan unroll factor) and ``csr_conv`` (the CSR layer class the
        conv factory builds, by default ``csr_jax.CSRConv``).

    Returns:
      a ``flax.linen.Module`` called as ``model(x, train)`` on NHWC input.
    """
    spec = _spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    policy = get_policy(name, csr)
    factory_fields = {k: overrides.pop(k) for k in ("unroll", "csr_conv") if k in overrides}
    valid = {f.name for f in dataclasses.fields(spec.module)} - {
        "parent",
        "name",
        "conv",
        "dtype",
        "num_classes",
    }
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(
            f"{name} does not take override(s) {bad}; valid: {sorted(valid | {'unroll', 'csr_conv'})}."
        )
    fixed = sorted(set(overrides) & set(spec.fixed))
    if fixed:
        raise TypeError(f"{fixed} define {name} itself; pick another registered model instead.")
    conv = ConvFactory(policy=policy, dtype=dtype, **factory_fields)
    model = spec.module(num_classes=num_classes, conv=conv, dtype=dtype, **spec.fixed, **overrides)
    if policy is not None and check:
        check_coverage(policy, conv_plan(model, spec.input_shape), model_name=name)
    return model
