"""Closed-form parameter/MAC counts against real layers, and the O(1/T^2) behaviour."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from csr_jax import CSRConv, accounting


@pytest.mark.parametrize(
    "c_in,c_out,k,T,bias,depthwise",
    [
        (c_in, c_out, k, T, bias, False)
        for c_in, c_out, k, T, bias in itertools.product(
            (7, 16, 33), (5, 24), (1, 3), (1, 2, 3, 4), (False, True)
        )
        if T <= min(c_in, c_out)
    ]
    + [
        (c, c, 3, T, bias, True)
        for c, T, bias in itertools.product((8, 15), (1, 2, 3), (False, True))
    ],
)
def test_param_closed_form_matches_layer(c_in, c_out, k, T, bias, depthwise):
    layer = CSRConv(c_out, k, T, use_bias=bias, depthwise=depthwise)
    shapes = jax.eval_shape(
        layer.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, c_in), jnp.float32)
    )
    assert accounting.count_params(shapes) == accounting.csr_conv_params(
        c_in, c_out, k, T, use_bias=bias, depthwise=depthwise
    )


def test_param_formula_values_from_spec():
    # docs/csr_conv.md §8 written out for 96 -> 576, 1x1, T=3: g_in=32, g_out=192.
    assert accounting.csr_conv_params(96, 576, 1, 3) == 32 * 192 + 192 * 192 + 2
    assert accounting.csr_conv_params(64, 64, 3, 4, use_bias=True) == 9 * 16 * 16 * 2 + 2 + 2 * 16
    assert accounting.csr_conv_params(32, 32, 3, 2, depthwise=True) == 2 * 9 * 16 + 2
    assert accounting.conv_params(96, 576, 1) == 96 * 576


def test_macs_closed_form_and_the_spec_warning():
    # 1x1 expansion C -> 6C with T=3 costs MORE MACs than the plain conv (docs/csr_conv.md §9).
    c = 96
    plain = accounting.conv_macs(c, 6 * c, 1, 32)
    csr = accounting.csr_conv_macs(c, 6 * c, 1, 3, 32)
    assert csr == (3 * 32 * 192 + 2 * 192 * 192) * 32 * 32
    assert csr > plain


def test_layer_report_counts_match_the_model():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(16, (3, 3), strides=2, padding=1)(x)
            x = CSRConv(32, 3, 4, name="csr")(x)
            x = CSRConv(32, 3, 2, depthwise=True, strides=2, name="dw")(x)
            x = x.mean(axis=(1, 2))
            return nn.Dense(10)(x)

    x = jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32)
    report = accounting.layer_report(Net(), x)
    assert [r.kind for r in report] == ["conv", "csr_conv", "csr_conv", "dense"]
    assert [r.path for r in report] == ["Conv_0", "csr", "dw", "Dense_0"]
    params = accounting.count_params(jax.eval_shape(Net().init, jax.random.key(0), x))
    assert sum(r.params for r in report) == params
    assert report[0].macs == 9 * 3 * 16 * 8 * 8  # per image, whatever the batch
    assert report[1].macs == accounting.csr_conv_macs(16, 32, 3, 4, 8)
    assert report[2].out_hw == (4, 4) and report[2].depthwise
    assert report[3].macs == 32 * 10
    assert accounting.model_macs(Net(), x) == sum(r.macs for r in report)
    assert "total" in accounting.format_report(report)


def test_reduction_scales_as_one_over_t_squared():
    # ratio * T^2 tends to a constant (1 + C_out/C_in) as T grows, for divisible channels; the two
    # scalars alpha/beta add 2*T^2/(k^2 C_in C_out), which stays below 1% here.
    c_in, c_out, k = 512, 512, 3
    scaled = []
    for T in (2, 4, 8, 16, 32, 64):
        ratio = accounting.csr_conv_params(c_in, c_out, k, T) / accounting.conv_params(
            c_in, c_out, k
        )
        scaled.append(ratio * T * T)
    assert np.allclose(scaled, 2.0, rtol=1e-2), scaled
    ratios = [accounting.csr_conv_params(c_in, c_out, k, T) for T in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(ratios, ratios[1:]))


def test_count_params_ignores_batch_stats():
    variables = {"params": {"w": jnp.zeros((3, 4))}, "batch_stats": {"mean": jnp.zeros((100,))}}
    assert accounting.count_params(variables) == 12
    assert accounting.count_params(variables["params"]) == 12


def test_layer_report_counts_a_surgery_converted_conv_once():
    from csr_jax.policy import Rule
    from csr_jax.surgery import convert

    class Foreign(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(16, (3, 3))(x)
            return nn.Conv(24, (1, 1))(x)

    x = jax.ShapeDtypeStruct((1, 8, 8, 8), jnp.float32)
    converted, _ = convert(Foreign(), Rule(4, kernel_sizes=1), x)
    report = accounting.layer_report(converted, x)
    assert [r.kind for r in report] == ["conv", "csr_conv"]
    params = accounting.count_params(jax.eval_shape(converted.init, jax.random.key(0), x))
    assert sum(r.params for r in report) == params


def test_layer_report_keeps_python_keyword_arguments_static():
    class Branchy(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.Conv(8, (3, 3))(x)
            if train:  # a Python branch, as every backbone has for BatchNorm/dropout
                x = nn.Conv(8, (1, 1))(x)
            return x

    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    assert len(accounting.layer_report(Branchy(), x, train=True)) == 2
    assert len(accounting.layer_report(Branchy(), x, train=False)) == 1
