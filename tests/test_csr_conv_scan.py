"""The rolled form of CSRConv's hidden recurrence: ``flax.linen.scan`` over the hidden cell, with
the same parameter tree as the unrolled default and the same function (to float rounding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from csr_jax import CSRConv

CASES = [
    # (c_in, c_out, k, T, depthwise, bias)
    (9, 12, 3, 4, False, True),
    (10, 13, 1, 4, False, False),
    (8, 8, 3, 3, True, True),
    (12, 11, 3, 10, False, True),  # T above the full-unroll limit: the default itself is rolled
]


def _shapes(tree):
    return jax.tree_util.tree_map(jnp.shape, tree)


def _perturb(variables, seed):
    """Moves alpha/beta off their 0.5 init so a mix-up of the two would show."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            jnp.asarray(rng.uniform(-1.0, 1.5), leaf.dtype)
            if path[-1].key in ("alpha", "beta")
            else leaf
        ),
        variables,
    )


@pytest.mark.parametrize("c_in,c_out,k,T,depthwise,bias", CASES)
def test_rolled_and_unrolled_share_parameters_and_agree(c_in, c_out, k, T, depthwise, bias):
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, c_in))
    kwargs = dict(use_bias=bias, depthwise=depthwise)
    unrolled = CSRConv(c_out, k, T, unroll=T - 1, **kwargs)  # straight-line code for any T
    rolled = CSRConv(c_out, k, T, unroll=1, **kwargs)
    v_unrolled = unrolled.init(jax.random.key(1), x)
    v_rolled = rolled.init(jax.random.key(1), x)
    assert _shapes(v_rolled) == _shapes(v_unrolled)
    assert set(v_rolled["params"]["hidden"]) >= {"hidden_kernel", "alpha", "beta"}
    variables = _perturb(v_unrolled, T)

    def loss(layer, v):
        y = layer.apply(v, x)
        return jnp.mean(jnp.sin(y)), y

    (l_u, y_u), g_u = jax.value_and_grad(lambda v: loss(unrolled, v), has_aux=True)(variables)
    (l_r, y_r), g_r = jax.value_and_grad(lambda v: loss(rolled, v), has_aux=True)(variables)
    scale = float(jnp.abs(y_u).max())
    np.testing.assert_allclose(y_r, y_u, rtol=1e-5, atol=1e-6 * scale)
    for a, b in zip(jax.tree_util.tree_leaves(g_r), jax.tree_util.tree_leaves(g_u)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_rolled_form_runs_in_linen_scan_with_broadcast_params(monkeypatch):
    calls = []
    real_scan = nn.scan

    def spy(target, **kwargs):
        calls.append(kwargs)
        return real_scan(target, **kwargs)

    monkeypatch.setattr(nn, "scan", spy)
    x = jnp.ones((1, 5, 5, 8))
    variables = CSRConv(8, 3, 4).init(jax.random.key(0), x)
    assert calls == []  # T <= 8 and unroll=None: unrolled, no scan
    for unroll in (1, 2):
        jaxpr = str(jax.make_jaxpr(CSRConv(8, 3, 4, unroll=unroll).apply)(variables, x))
        assert "scan[" in jaxpr
    assert len(calls) == 2
    assert all(
        c["variable_broadcast"] == "params" and c["split_rngs"] == {"params": False} for c in calls
    )
    assert [c["unroll"] for c in calls] == [1, 2]
    # unroll >= T - 1 covers every step: straight-line code again.
    assert "scan[" not in str(jax.make_jaxpr(CSRConv(8, 3, 4, unroll=3).apply)(variables, x))
    assert len(calls) == 2
