"""csr_jax: Channel-Split Recurrent Convolution (CSR-Conv, WACV 2023) in JAX/Flax.

The public API is small on purpose, since other JAX projects import the layer:

* :class:`CSRConv` — the layer (``csr_jax.csr_conv``); ``csr_jax.nnx.CSRConv`` is the same layer
  as a native ``flax.nnx`` module (import ``csr_jax.nnx`` explicitly; it is not loaded here);
* ``csr_jax.accounting`` — closed-form parameter/MAC counts and per-layer model reports;
* ``csr_jax.surgery`` — convert the convs of a linen model you did not write, without editing it;
* ``csr_jax.models`` — the paper's backbones: ``create(name, num_classes=..., csr=...)``,
  ``list_models()``, ``list_presets(name)``;
* ``csr_jax.policy`` — ``CSRPolicy``/``Rule``: which convs of a backbone become CSR-Conv, with which T.

Data pipelines (``csr_jax.data``) and the training library (``csr_jax.train``) are imported
explicitly, so importing the layer stays light.

Every name here is loaded on first use (PEP 562 ``__getattr__``): ``import csr_jax`` itself loads
neither JAX nor anything else, so ``csr_jax.report`` (run summaries, no JAX) and
``csr_jax.policy`` (pure Python) stay usable without the numerical stack, and a layer user who
installed only the core dependencies (jax, flax, numpy) never touches the training stack
(optax, orbax, grain, tensorflow-datasets, matplotlib). ``tests/test_imports.py`` checks this.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # For type checkers and IDEs; at run time the names below load lazily.
    from csr_jax import accounting, models, policy, surgery
    from csr_jax.accounting import count_params, csr_conv_macs, csr_conv_params, layer_report
    from csr_jax.csr_conv import CSRConv
    from csr_jax.models import create, list_models, list_presets
    from csr_jax.policy import CSRPolicy, PolicyError, Rule
    from csr_jax.surgery import SurgeryReport, convert, transfer_weights

# Public name -> the module that defines it (submodules map to themselves).
_LAZY = {
    "accounting": "csr_jax.accounting",
    "models": "csr_jax.models",
    "policy": "csr_jax.policy",
    "surgery": "csr_jax.surgery",
    "count_params": "csr_jax.accounting",
    "csr_conv_macs": "csr_jax.accounting",
    "csr_conv_params": "csr_jax.accounting",
    "layer_report": "csr_jax.accounting",
    "CSRConv": "csr_jax.csr_conv",
    "create": "csr_jax.models",
    "list_models": "csr_jax.models",
    "list_presets": "csr_jax.models",
    "CSRPolicy": "csr_jax.policy",
    "PolicyError": "csr_jax.policy",
    "Rule": "csr_jax.policy",
    "SurgeryReport": "csr_jax.surgery",
    "convert": "csr_jax.surgery",
    "transfer_weights": "csr_jax.surgery",
}


def __getattr__(name: str) -> Any:
    """Imports the module behind ``name`` on first access and caches the result."""
    if name not in _LAZY:
        raise AttributeError(f"module 'csr_jax' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if _LAZY[name] == f"csr_jax.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "CSRConv",
    "accounting",
    "surgery",
    "models",
    "policy",
    "create",
    "list_models",
    "list_presets",
    "CSRPolicy",
    "Rule",
    "PolicyError",
    "SurgeryReport",
    "convert",
    "transfer_weights",
    "count_params",
    "csr_conv_params",
    "csr_conv_macs",
    "layer_report",
]
