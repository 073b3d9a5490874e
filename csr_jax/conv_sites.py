"""The conv sites of any ``flax.linen`` model, and its abstract init.

Surgery (:mod:`csr_jax.surgery`) and the per-layer accounting (:func:`csr_jax.accounting.layer_report`)
both watch a model's convs being called with ``nn.intercept_methods``. This module is what they
share: :func:`site_of` describes one conv call as the :class:`~csr_jax.policy.ConvSite` a policy
decides and a report prints (the backbones' ``ConvFactory`` builds the same record directly), and
:func:`abstract_init` initialises a model under ``jax.eval_shape`` with its array arguments traced
and everything else (``train=False``, flags the model branches on) kept static.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from csr_jax.csr_conv import CSRConv
from csr_jax.policy import ConvSite

__all__ = ["CONV_TYPES", "abstract_init", "broadcast", "site_of"]

#: Layer types that are convs: ``nn.Conv`` (surgery converts it), its unshared and transposed
#: relatives (reported, never converted) and the CSR layer itself.
CONV_TYPES = (nn.Conv, nn.ConvLocal, nn.ConvTranspose, CSRConv)


def broadcast(value: Any, rank: int) -> tuple[int, ...]:
    """Flax's broadcast of ``strides`` and dilations: None means 1, an int is repeated."""
    if value is None:
        value = 1
    if isinstance(value, int):
        return (value,) * rank
    return tuple(int(v) for v in value)


def site_of(
    module: nn.Module,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...] | None = None,
    root: tuple[str, ...] = (),
) -> ConvSite:
    """The site of one call of a conv module on an input of shape ``x_shape``.

    ``root`` is cut from the front of the module's path, so that paths are relative to a model
    that sits inside a larger one. With ``y_shape`` (the call's output) the site carries its
    output spatial size. Convs of foreign models have no role and no block.
    """
    scope_path = tuple(str(p) for p in module.path)
    if scope_path[: len(root)] == root:
        scope_path = scope_path[len(root) :]
    if isinstance(module, CSRConv):
        kernel = broadcast(module.kernel_size, 2)
        c_in = int(x_shape[-1])
        groups = c_in if module.depthwise else 1
    else:
        ks = module.kernel_size
        kernel = (int(ks),) if isinstance(ks, int) else tuple(int(k) for k in ks)
        c_in = int(x_shape[-1])
        groups = int(getattr(module, "feature_group_count", 1))
    out_hw = None
    if y_shape is not None:
        out_hw = tuple(int(d) for d in y_shape[-1 - len(kernel) : -1])
    return ConvSite(
        path="/".join(scope_path),
        role=None,
        block=None,
        in_channels=c_in,
        out_channels=int(module.features),
        kernel_size=kernel,
        groups=groups,
        use_bias=bool(module.use_bias),
        strides=broadcast(module.strides, len(kernel)),
        out_hw=out_hw,
        layer=type(module).__name__,
    )


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def abstract_init(
    model: nn.Module,
    args: tuple,
    kwargs: Mapping[str, Any],
    *,
    rngs: Mapping[str, jax.Array] | None = None,
    method: Any = None,
) -> Any:
    """``model.init(rngs, *args, **kwargs)`` under ``jax.eval_shape``: arrays (and
    ``jax.ShapeDtypeStruct`` s) become shapes, every other leaf stays a static Python value."""
    rngs = (
        dict(rngs)
        if rngs is not None
        else {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    )
    leaves, treedef = jax.tree_util.tree_flatten((tuple(args), dict(kwargs)))
    arrays = [leaf for leaf in leaves if _is_array(leaf)]

    def init(array_leaves):
        it = iter(array_leaves)
        a, kw = jax.tree_util.tree_unflatten(
            treedef, [next(it) if _is_array(leaf) else leaf for leaf in leaves]
        )
        return model.init(rngs, *a, method=method, **kw)

    return jax.eval_shape(init, arrays)
