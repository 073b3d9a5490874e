"""CSRConv's integer arguments: NumPy integers (from configs, array shapes) work like ints, and
booleans are refused with a clear message instead of being taken as 0/1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csr_jax import CSRConv


def test_numpy_integers_give_the_same_layer_as_python_ints():
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 10))
    plain = CSRConv(9, 3, 3, strides=2, padding=1, use_bias=True, unroll=1)
    numpy = CSRConv(
        np.int64(9),
        (np.int32(3), np.int64(3)),
        np.int64(3),
        strides=np.int16(2),
        padding=np.int64(1),
        use_bias=True,
        unroll=np.int64(1),
    )
    variables = plain.init(jax.random.key(1), x)
    assert jax.tree_util.tree_map(
        jnp.shape, numpy.init(jax.random.key(1), x)
    ) == jax.tree_util.tree_map(jnp.shape, variables)
    np.testing.assert_array_equal(numpy.apply(variables, x), plain.apply(variables, x))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(features=8, kernel_size=3, steps=True),
            "steps must be an int >= 1, got the bool True",
        ),
        (
            dict(features=True, kernel_size=3, steps=1),
            "features must be an int >= 1, got the bool True",
        ),
        (dict(features=8, kernel_size=True, steps=2), "kernel_size must be a positive int"),
        (dict(features=8, kernel_size=(3, True), steps=2), "kernel_size must be a positive int"),
        (dict(features=8, kernel_size=3, steps=2, strides=True), "strides must be a positive int"),
        (dict(features=8, kernel_size=3, steps=2, padding=True), "invalid padding"),
        (dict(features=8, kernel_size=3, steps=2, unroll=True), "unroll must be"),
        (dict(features=8, kernel_size=3, steps=2.0), "steps must be an int >= 1, got 2.0"),
    ],
)
def test_booleans_and_non_integers_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CSRConv(**kwargs).init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))
