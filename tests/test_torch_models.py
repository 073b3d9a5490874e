"""The PyTorch peer networks (``benchmarks/torch_models.py``) are the networks csr_jax builds.

Only meaningful where the optional ``bench`` extra (PyTorch) is installed; the whole module is
about PyTorch, so it is skipped without it. Two facts make the peer benchmark a like-for-like
comparison: the parameter counts agree with csr_jax's for every benchmarked configuration, and
the step-by-step PyTorch CSR layer computes csr_jax's ``CSRConv`` function (same weights in, same
output out), including the channel wrap-around, the output cut and a strided k x k input path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import csr_jax  # noqa: E402
from benchmarks import torch_models  # noqa: E402
from csr_jax import CSRConv, models  # noqa: E402


def _jax_params(name: str, csr: str | None) -> int:
    model = models.create(name, num_classes=10, csr=csr)
    init = lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)},
        jnp.zeros((1, 32, 32, 3)),
        train=False,
    )
    return csr_jax.count_params(jax.eval_shape(init))


@pytest.mark.parametrize(
    "name, csr, build",
    [
        ("mobilenetv2_cifar", None, lambda: torch_models.MobileNetV2Cifar(csr=False)),
        ("mobilenetv2_cifar", "reference", lambda: torch_models.MobileNetV2Cifar(csr=True)),
        ("resnet20", None, lambda: torch_models.ResNetCifar(3)),
        ("resnet20", "t2", lambda: torch_models.ResNetCifar(3, steps=2)),
    ],
)
def test_param_counts_equal_csr_jax(name, csr, build):
    assert torch_models.count_params(build()) == _jax_params(name, csr)


def test_published_counts():
    assert torch_models.count_params(torch_models.MobileNetV2Cifar()) == 2_237_770
    assert torch_models.count_params(torch_models.ResNetCifar(3)) == 269_722


def _to_torch(kernel) -> torch.Tensor:
    """(kh, kw, in, out) Flax kernel -> (out, in, kh, kw) PyTorch weight."""
    return torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())


@pytest.mark.parametrize(
    "c_in, c_out, k, steps, stride", [(5, 7, 1, 3, 1), (6, 8, 3, 2, 2), (8, 8, 3, 4, 1)]
)
def test_step_by_step_layer_computes_csrconv(c_in, c_out, k, steps, stride):
    x = np.random.default_rng(0).standard_normal((2, 9, 9, c_in)).astype(np.float32)
    layer = CSRConv(c_out, k, steps, strides=stride, padding=(k - 1) // 2)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    params = jax.tree.map(np.asarray, variables["params"])
    # Non-default mixing weights, so a swapped alpha/beta cannot pass.
    params["hidden"]["alpha"], params["hidden"]["beta"] = np.float32(0.7), np.float32(0.2)
    expected = np.asarray(layer.apply({"params": params}, jnp.asarray(x)))

    peer = torch_models.CSRConv2d(c_in, c_out, k, steps, stride, (k - 1) // 2)
    with torch.no_grad():
        peer.input_conv.weight.copy_(_to_torch(params["input_kernel"]))
        peer.hidden_conv.weight.copy_(_to_torch(params["hidden"]["hidden_kernel"]))
        peer.alpha.fill_(0.7)
        peer.beta.fill_(0.2)
        got = peer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
