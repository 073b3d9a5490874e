"""CSR-Conv as a native ``flax.nnx`` module: ``csr_jax.nnx.CSRConv``.

Flax's current API is NNX; this layer is for NNX code that builds its own models (for a whole
linen backbone or a surgery-converted model, wrap it with ``nnx.bridge.ToNNX`` instead). It holds
the same parameters as the linen :class:`csr_jax.CSRConv`, flat on the module -- ``input_kernel``,
``hidden_kernel``, ``alpha``, ``beta`` (and ``input_bias``, ``hidden_bias`` with ``use_bias``) --
with the same shapes, and computes with the SAME pure functions (``csr_jax.csr_conv._forward``
and the hidden-path functions), so there is one implementation of the math; only parameter
creation differs. Being NNX, it knows ``in_features`` at construction, so a bad configuration is
refused there rather than at the first call.

This module is not imported by ``import csr_jax`` (importing the layer stays light); import it
explicitly: ``from csr_jax.nnx import CSRConv``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.linen.dtypes import promote_dtype

from csr_jax.csr_conv import (
    Array,
    Dtype,
    HiddenWeights,
    Initializer,
    PaddingLike,
    SecondHiddenInput,
    _check_input,
    _fan_in,
    _forward,
    _hidden_path,
    _kernel_shapes,
    _resolve,
    reference_bias_init,
    reference_kernel_init,
)

__all__ = ["CSRConv"]


class CSRConv(nnx.Module):
    """Channel-Split Recurrent Convolution as an ``nnx.Module``: the linen ``csr_jax.CSRConv``
    with ``in_features`` given up front (like ``nnx.Conv``).

    Args mirror the linen layer's attributes (see its docstring for the semantics):
      in_features: input channels C_in.
      out_features: output channels C_out (the linen layer's ``features``).
      kernel_size: k or (kh, kw); odd sizes when ``steps > 1``.
      steps: T >= 1, the number of channel chunks.
      strides, padding, use_bias, depthwise, dtype, param_dtype, precision: as ``nn.Conv``.
      unroll: None (default) runs the T - 1 hidden steps as straight-line code for T <= 8 and as
        a rolled ``lax.scan`` beyond; an int n is a scan with unroll factor n (``n >= T - 1``:
        straight-line). Every value computes the same function.
      kernel_init, bias_init: as the linen layer (PyTorch's conv defaults by default).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    With ``steps == 1`` the hidden parameters are None (the layer is exactly a conv), as are
    the biases without ``use_bias``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int],
        steps: int,
        *,
        strides: int | tuple[int, int] = 1,
        padding: PaddingLike = "SAME",
        use_bias: bool = False,
        depthwise: bool = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        unroll: int | None = None,
        kernel_init: Initializer = reference_kernel_init,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ):
        spec = _resolve(
            in_features, out_features, kernel_size, steps, strides, padding, depthwise, unroll
        )
        self.in_features = int(in_features)
        self.out_features = spec.features
        self.steps = spec.steps
        self.kernel_size = spec.kernel_size
        self.strides = spec.strides
        self.padding = spec.padding
        self.use_bias = bool(use_bias)
        self.depthwise = bool(depthwise)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.unroll = unroll
        self._spec = spec

        u_shape, v_shape = _kernel_shapes(spec, self.depthwise)
        bias_init_u = bias_init or reference_bias_init(_fan_in(u_shape))
        bias_init_v = bias_init or reference_bias_init(_fan_in(v_shape))
        hidden = spec.steps > 1
        # Each attribute is assigned once, Param or None: NNX fixes an attribute as data or static
        # at its first assignment.
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), u_shape, param_dtype))
        self.input_bias = (
            nnx.Param(bias_init_u(rngs.params(), (spec.g_out,), param_dtype)) if use_bias else None
        )
        self.hidden_kernel = (
            nnx.Param(kernel_init(rngs.params(), v_shape, param_dtype)) if hidden else None
        )
        self.alpha = nnx.Param(jnp.full((), 0.5, param_dtype)) if hidden else None
        self.beta = nnx.Param(jnp.full((), 0.5, param_dtype)) if hidden else None
        self.hidden_bias = (
            nnx.Param(bias_init_v(rngs.params(), (spec.g_out,), param_dtype))
            if hidden and use_bias
            else None
        )

    def __call__(self, x: Array) -> Array:
        """Applies the layer to NHWC ``x``; returns ``(N, H', W', out_features)``."""
        _check_input(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"CSRConv: the layer was built for in_features={self.in_features} input channels, got "
                f"input of shape {x.shape}; build it with in_features={x.shape[-1]}."
            )
        spec = self._spec

        def hidden_weights(dtype: Any) -> HiddenWeights:
            kernel, bias, alpha, beta = promote_dtype(
                _value(self.hidden_kernel),
                _value(self.hidden_bias),
                _value(self.alpha),
                _value(self.beta),
                dtype=dtype,
            )
            return kernel, bias, alpha, beta

        def hidden(a: Array, time_axis: int, r_2: SecondHiddenInput | None) -> Array:
            return _hidden_path(
                a,
                time_axis,
                *hidden_weights(a.dtype),
                depthwise=self.depthwise,
                precision=self.precision,
                unroll=spec.scan_unroll,
                r_2=r_2,
            )

        return _forward(
            x,
            _value(self.input_kernel),
            _value(self.input_bias),
            spec,
            depthwise=self.depthwise,
            precision=self.precision,
            dtype=self.dtype,
            hidden=hidden,
            hidden_weights=hidden_weights,
        )


def _value(param: nnx.Param | None) -> Array | None:
    return None if param is None else param[...]
