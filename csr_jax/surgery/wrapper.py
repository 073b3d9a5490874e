"""The converted model: ``model`` run under an interceptor that computes the selected convs as CSR.

When a conv that the policy selects is called, the interceptor computes a ``CSRConv`` bound to
*that conv's own scope* instead of the conv; so the CSR parameters live exactly where the conv's
did (``.../Conv_3/input_kernel`` instead of ``.../Conv_3/kernel``), every other variable keeps its
path, and the wrapper shares the model's root scope, so the variable tree has the original
model's layout. Every conv call is recorded with :func:`csr_jax.policy.record`, exactly as the
backbones' ``ConvFactory`` records its convs.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import jax
from flax import linen as nn

from csr_jax.conv_sites import site_of
from csr_jax.csr_conv import CSRConv
from csr_jax.policy import CSR, CSRPolicy, record
from csr_jax.surgery.errors import SurgeryError
from csr_jax.surgery.planning import csr_padding, plan

__all__ = ["CSRConverted"]

# Layer types the surgery looks at. ``nn.Conv`` can be converted; the others are only reported.
_FOREIGN_CONVS = (nn.Conv, nn.ConvLocal, nn.ConvTranspose)


def _apply_csr(
    module: nn.Conv, site: Any, steps: int, use_conv_init: bool, x: jax.Array
) -> jax.Array:
    """Runs a ``CSRConv`` in the conv's own scope, so its parameters sit at the conv's path."""
    inits = (
        dict(kernel_init=module.kernel_init, bias_init=module.bias_init) if use_conv_init else {}
    )
    layer = CSRConv(
        features=module.features,
        kernel_size=site.kernel_size,
        steps=steps,
        strides=site.strides,
        padding=csr_padding(module, tuple(x.shape), site),
        use_bias=module.use_bias,
        depthwise=site.depthwise,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        precision=module.precision,
        parent=module.scope,
        **inits,
    )
    # nn.Conv accepts any number of leading batch axes (or none); CSRConv wants exactly one.
    batch_shape = x.shape[:-3]
    y = layer(x.reshape((-1,) + x.shape[-3:]))
    return y.reshape(batch_shape + y.shape[1:])


def _make_interceptor(
    policy: CSRPolicy, t1_as_csr: bool, root: tuple[str, ...]
) -> Callable[..., Any]:
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, _FOREIGN_CONVS):
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["inputs"]
        site = site_of(module, tuple(x.shape), root=root)
        decision = plan(module, site, tuple(x.shape), policy, t1_as_csr)
        if decision.status == CSR:
            rule = policy.rules[decision.rule]  # type: ignore[index]
            y = _apply_csr(module, site, decision.steps, rule.use_conv_init, x)
        else:
            y = next_fun(*args, **kwargs)
        record(site_of(module, tuple(x.shape), tuple(y.shape), root=root), decision)
        return y

    return interceptor


class CSRConverted(nn.Module):
    """``model`` with the convs that ``policy`` selects computed as ``CSRConv``; made by
    :func:`csr_jax.surgery.convert`.

    It shares ``model``'s root scope, so its variables have the model's layout, and forwards
    every method of ``model``: ``converted.apply(v, x, method='encode')`` runs ``model.encode``
    converted. (Pass methods by name or as ``converted.encode``, not as ``ModelClass.encode``,
    which would run the original class's code on the wrapper.)
    """

    model: nn.Module
    policy: CSRPolicy
    t1_as_csr: bool = False

    def setup(self) -> None:
        nn.share_scope(self, self.model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls ``model(*args, **kwargs)`` with the selected convs replaced."""
        return self._csr_run("__call__", args, kwargs)

    def _csr_run(self, method_name: str, args: tuple, kwargs: dict) -> Any:
        if self.scope is None:
            raise SurgeryError(
                "A CSRConverted model is called like any linen module: through converted.init / "
                "converted.apply, or as a submodule (a field of, or created inside, another module)."
            )
        root = tuple(str(p) for p in self.scope.path)
        with nn.intercept_methods(_make_interceptor(self.policy, self.t1_as_csr, root)):
            return getattr(self.model, method_name)(*args, **kwargs)

    @nn.nowrap
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("model")
            if name.startswith("_") or model is None or not hasattr(type(model), name):
                raise
            if not callable(getattr(type(model), name)):
                return getattr(model, name)  # a field or property of the model, e.g. num_classes

            def forward(self_: CSRConverted, *args: Any, **kwargs: Any) -> Any:
                return self_._csr_run(name, args, kwargs)

            forward.__name__ = name
            return types.MethodType(forward, self)
