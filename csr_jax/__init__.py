"""csr_jax: Channel-Split Recurrent Convolution (CSR-Conv, WACV 2023) in JAX/Flax.

The public API is small on purpose, since other JAX projects import the layer:

* :class:`CSRConv` — the layer (``csr_jax.csr_conv``);
* ``csr_jax.accounting`` — closed-form parameter/MAC counts and per-layer model reports;
* ``csr_jax.surgery`` — convert the convs of a linen model you did not write, without editing it;
* ``csr_jax.models`` — the paper's backbones: ``create(name, num_classes=..., csr=...)``,
  ``list_models()``, ``list_presets(name)``;
* ``csr_jax.policy`` — ``CSRPolicy``/``Rule``: which convs of a backbone become CSR-Conv, with which T.

Data pipelines (``csr_jax.data``) and the training library (``csr_jax.train``) are imported
explicitly, so importing the layer stays light.
"""

from csr_jax import accounting, models, policy, surgery
from csr_jax.accounting import count_params, csr_conv_macs, csr_conv_params, layer_report
from csr_jax.csr_conv import CSRConv
from csr_jax.models import create, list_models, list_presets
from csr_jax.policy import CSRPolicy, PolicyError, Rule
from csr_jax.surgery import ConvRule, SurgeryReport, convert, transfer_weights

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
    "ConvRule",
    "SurgeryReport",
    "convert",
    "transfer_weights",
    "count_params",
    "csr_conv_params",
    "csr_conv_macs",
    "layer_report",
]
