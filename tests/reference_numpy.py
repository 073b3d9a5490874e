"""An independent float64 NumPy implementation of CSR-Conv, written from docs/csr_conv.md step by step.

It loops over the T steps like the authors' reference code and uses a naive direct convolution,
so it shares nothing with the layer's batched/scanned implementation.
"""

from __future__ import annotations

import math

import numpy as np


def conv2d(x, w, stride, pads, groups=1):
    """Direct NHWC convolution; w is HWIO with I = C_in / groups; pads ((top, bottom), (left, right))."""
    n, h, wd, c = x.shape
    kh, kw, cin_g, cout = w.shape
    (pt, pb), (pl, pr) = pads
    xp = np.zeros((n, h + pt + pb, wd + pl + pr, c), dtype=np.float64)
    xp[:, pt : pt + h, pl : pl + wd, :] = x
    ho = (h + pt + pb - kh) // stride[0] + 1
    wo = (wd + pl + pr - kw) // stride[1] + 1
    out = np.zeros((n, ho, wo, cout), dtype=np.float64)
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[..., g * cin_g : (g + 1) * cin_g]
        ws = w[..., g * cout_g : (g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :, i : i + stride[0] * ho : stride[0], j : j + stride[1] * wo : stride[1], :
                ]
                out[..., g * cout_g : (g + 1) * cout_g] += patch @ ws[i, j]
    return out


def same_pads(size, k, s):
    """TF/XLA 'SAME' padding for one dimension."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return (total // 2, total - total // 2)


def csr_conv(x, params, *, features, kernel_size, steps, stride, padding, depthwise=False):
    """docs/csr_conv.md §1-§6. params uses the layer's parameter names."""
    x = np.asarray(x, np.float64)
    n, h, w, c_in = x.shape
    kh, kw = kernel_size
    T = steps
    g_in, g_out = -(-c_in // T), -(-features // T)
    if padding == "SAME":
        pads = (same_pads(h, kh, stride[0]), same_pads(w, kw, stride[1]))
    elif padding == "VALID":
        pads = ((0, 0), (0, 0))
    else:
        pads = ((padding, padding), (padding, padding))
    # 2. wrap-around: x, x, ... cut to T * g_in channels
    idx = [i % c_in for i in range(T * g_in)]
    x = x[..., idx]
    chunks = [x[..., t * g_in : (t + 1) * g_in] for t in range(T)]
    U = np.asarray(params["input_kernel"], np.float64)
    bU = np.asarray(params.get("input_bias", np.zeros(g_out)), np.float64)
    groups = g_in if depthwise else 1
    hs = []
    h_prev = None
    for t in range(T):
        a = conv2d(chunks[t], U, stride, pads, groups) + bU
        if t == 0:
            h_t = a
        else:
            V = np.asarray(params["hidden_kernel"], np.float64)
            bV = np.asarray(params.get("hidden_bias", np.zeros(g_out)), np.float64)
            alpha = float(params["alpha"])
            beta = float(params["beta"])
            r = (
                conv2d(
                    h_prev,
                    V,
                    (1, 1),
                    (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2),
                    g_out if depthwise else 1,
                )
                + bV
            )
            # the reference's own form: alpha*relu(a+r) - beta*r + r
            h_t = alpha * np.maximum(a + r, 0.0) - beta * r + r
        hs.append(h_t)
        h_prev = h_t
    return np.concatenate(hs, axis=-1)[..., :features]


def flat_params(variables):
    """Flattens the layer's nested params into {leaf_name: array} (each name appears once)."""
    out = {}

    def walk(tree):
        for k, v in tree.items():
            if hasattr(v, "items"):
                walk(v)
            else:
                assert k not in out, f"parameter name {k} appears twice"
                out[k] = np.asarray(v)

    walk(variables["params"])
    return out
