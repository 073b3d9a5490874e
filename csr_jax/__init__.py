"""csr_jax: Channel-Split Recurrent Convolution (CSR-Conv, WACV 2023) in JAX/Flax.

The public API is small on purpose, since other JAX projects import the layer:

* :class:`CSRConv` — the layer (``csr_jax.csr_conv``);
* ``csr_jax.accounting`` — closed-form parameter/MAC counts and per-layer model reports;
* ``csr_jax.surgery`` — convert the convs of a linen model you did not write, without editing it.
"""

from csr_jax import accounting, surgery
from csr_jax.accounting import count_params, csr_conv_macs, csr_conv_params, layer_report
from csr_jax.csr_conv import CSRConv
from csr_jax.surgery import ConvRule, SurgeryReport, convert, transfer_weights

__version__ = "0.1.0"

__all__ = [
    "CSRConv",
    "accounting",
    "surgery",
    "ConvRule",
    "SurgeryReport",
    "convert",
    "transfer_weights",
    "count_params",
    "csr_conv_params",
    "csr_conv_macs",
    "layer_report",
]
