"""Building blocks shared by the backbones: the conv factory, BatchNorm, pooling, inits.

Every backbone creates its convolutions through a :class:`ConvFactory`, never through
``nn.Conv`` directly. The factory asks the CSR policy about each conv (its path, role, block and
shape) and builds either an ordinary ``nn.Conv`` or a ``CSRConv`` under the same name, so one
backbone definition yields both the ordinary and the CSR network, with identical module paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from csr_jax import depthwise
from csr_jax.csr_conv import CSRConv, _pair, reference_kernel_init
from csr_jax.models.batch_norm import FusedBatchNorm
from csr_jax.policy import ConvSite, CSRPolicy, decide, record

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
ModuleDef = Any

# PyTorch's default conv/linear weight init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)),
# the same initializer the CSR layer uses for its kernels.
torch_default_init: Initializer = reference_kernel_init
# torchvision's conv init for ResNet / MobileNetV2 / EfficientNet / VGG: kaiming_normal_(fan_out, relu).
kaiming_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# kaiming_normal_ with its defaults (fan_in, relu), used by the CIFAR ResNets of He et al.
kaiming_fan_in: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@dataclasses.dataclass(frozen=True)
class ConvFactory:
    """Creates a backbone's convs: ``nn.Conv``, or ``CSRConv`` where the policy says so.

    Attributes:
      policy: the CSR policy; None builds the ordinary network.
      dtype: compute dtype of every conv (parameters stay ``param_dtype``).
      param_dtype: parameter dtype.
      unroll: passed to ``CSRConv``; None (default) unrolls the hidden steps for T <= 8, which
        ran several times faster than a rolled scan (benchmarks/RESULTS.md).
      conv: the ordinary conv class (``nn.Conv``'s signature).
      csr_conv: the CSR layer class (``CSRConv``'s signature); a field, as flax's ``ModuleDef``
        idiom, so a benchmark or an experiment can swap the implementation without patching.
    """

    policy: CSRPolicy | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    unroll: int | None = None
    conv: ModuleDef = nn.Conv
    csr_conv: ModuleDef = CSRConv

    def __call__(
        self,
        parent: nn.Module,
        x: Array,
        *,
        name: str,
        features: int,
        kernel_size: int | tuple[int, int],
        role: str,
        block: int | None = None,
        strides: int = 1,
        padding: int | str | None = None,
        use_bias: bool = False,
        groups: int = 1,
        kernel_init: Initializer = torch_default_init,
    ) -> Array:
        """Create the conv ``name`` as a child of ``parent`` (call from its compact method), apply it.

        ``padding`` None means PyTorch's symmetric ``(k - 1) // 2``, which torchvision layouts
        rely on (JAX's 'SAME' pads stride-2 convs asymmetrically). ``role`` and ``block`` are
        what the policy selects on; ``kernel_init`` applies to ordinary convs (``CSRConv``
        keeps the reference's init unless the deciding rule sets ``use_conv_init``).
        """
        ks = _pair(kernel_size, "kernel_size")
        if padding is None:
            padding = (ks[0] - 1) // 2 if ks[0] == ks[1] else ((ks[0] - 1) // 2, (ks[1] - 1) // 2)
        c_in = int(x.shape[-1])
        site = ConvSite(
            path="/".join((*map(str, parent.path), name)),
            role=role,
            block=block,
            in_channels=c_in,
            out_channels=features,
            kernel_size=ks,
            groups=groups,
            use_bias=use_bias,
            strides=_pair(strides, "strides"),
        )
        # On CPU depthwise convs run as shifted taps, 1x1 convs as a dot and other convs with their
        # kernel gradient summed over batch chunks; on GPU/TPU all are the XLA conv (chosen at
        # trace time, csr_jax.depthwise); the parameters are nn.Conv's either way.
        cpu_form = site.depthwise or groups == 1
        fast = {"conv_general_dilated": depthwise.conv_general_dilated()} if cpu_form else {}
        decision = decide(self.policy, site)
        steps = decision.steps
        if steps == 1:
            layer: nn.Module = self.conv(
                features,
                ks,
                strides=strides,
                padding=padding,
                use_bias=use_bias,
                feature_group_count=groups,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=kernel_init,
                name=name,
                **fast,
            )
        else:
            if groups != 1 and not site.depthwise:
                raise ValueError(
                    f"{site.path}: CSRConv supports ordinary (groups=1) and depthwise convs only, "
                    f"not groups={groups} with {c_in}->{features} channels; exclude this layer from the policy."
                )
            inits = {}
            if self.policy.rules[decision.rule].use_conv_init:
                inits = dict(kernel_init=kernel_init)
            layer = self.csr_conv(
                features,
                ks,
                steps,
                strides=strides,
                padding=padding,
                use_bias=use_bias,
                depthwise=site.depthwise,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                unroll=self.unroll,
                name=name,
                **inits,
            )
        y = layer(x)
        record(
            dataclasses.replace(site, out_hw=tuple(y.shape[1:3]), layer=type(layer).__name__),
            decision,
        )
        return y


def batch_norm(
    train: bool,
    dtype: Dtype | None,
    name: str,
    epsilon: float = 1e-5,
    zero_scale: bool = False,
    activation: Callable[[Array], Array] | None = None,
    norm: type[nn.BatchNorm] = FusedBatchNorm,
) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5).

    A :class:`~csr_jax.models.batch_norm.FusedBatchNorm`: ``nn.BatchNorm`` with a faster
    training-mode backward pass on CPU, same variables; ``activation`` (e.g. ``nn.relu6``) is
    applied to its output, its gradient taken inside that backward pass.

    Statistics are always reduced in float32, also for bf16 compute. ``zero_scale`` starts the
    scale at 0 instead of 1 (for the last BN of a residual branch, so the block starts as the
    identity). ``norm`` is the class built (a ``FusedBatchNorm``, or a subclass of it).
    """
    scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
    return norm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=epsilon,
        dtype=dtype,
        name=name,
        scale_init=scale_init,
        activation=activation,
    )


def global_avg_pool(x: Array) -> Array:
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    # PyTorch's adaptive pooling windows: [floor(i*in/out), ceil((i+1)*in/out)).
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, output_size: tuple[int, int]) -> Array:
    """``torch.nn.AdaptiveAvgPool2d`` on NHWC input: exact windows, also when upsampling.

    torchvision's VGG pools to 7x7 whatever the input size; two small averaging matrices
    express that as one contraction.
    """
    ph = jnp.asarray(_adaptive_pool_matrix(x.shape[1], output_size[0]), x.dtype)
    pw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], output_size[1]), x.dtype)
    return jnp.einsum("ih,jw,nhwc->nijc", ph, pw, x)


def classifier(
    x: Array,
    num_classes: int,
    dtype: Dtype | None,
    kernel_init: Initializer = torch_default_init,
    name: str = "classifier",
    bias_init: Initializer = nn.initializers.zeros,
) -> Array:
    """The final dense layer; logits come back in float32 so the loss is computed accurately
    whatever the compute dtype."""
    return nn.Dense(
        num_classes, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, name=name
    )(x).astype(jnp.float32)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round channels to a multiple of ``divisor``, never
    dropping more than 10% (used by MobileNetV2 and EfficientNet width scaling)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new
