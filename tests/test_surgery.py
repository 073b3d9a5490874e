"""CSR surgery on a model this project did not write: selection, report, weights, training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from csr_jax.accounting import count_params
from csr_jax.csr_conv import CSRConv
from csr_jax.policy import CSRPolicy, PolicyError, Rule
from csr_jax.surgery import CSRConverted, SurgeryError, convert, transfer_weights


class _Block(nn.Module):
    """A nested block, so paths have more than one level ('block/conv_a')."""

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(12, (3, 3), name="conv_a")(x))
        y = nn.Conv(12, (1, 1), use_bias=False, name="conv_b")(y)
        return x + y


class ForeignCNN(nn.Module):
    """A small CNN written the way any Flax user would write it; the surgery must not need edits."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), name="stem")(x)  # 3 -> 8, 3x3, bias
        x = nn.BatchNorm(use_running_average=not train, name="stem_bn")(x)
        x = nn.relu(x)
        x = nn.Conv(16, (1, 1), use_bias=False, name="expand")(x)  # 8 -> 16, 1x1
        x = nn.Conv(16, (3, 3), feature_group_count=16, name="dw")(x)  # depthwise
        x = nn.Conv(16, (3, 3), feature_group_count=4, name="grouped")(x)  # grouped, not depthwise
        x = nn.Conv(16, (3, 3), kernel_dilation=2, name="dilated")(x)  # atrous
        x = nn.relu(nn.Conv(12, (3, 3), strides=2, name="down")(x))  # 16 -> 12, stride 2
        x = _Block(name="block")(x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


ALL_CONVS = {"stem", "expand", "dw", "grouped", "dilated", "down", "block/conv_a", "block/conv_b"}


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
    model = ForeignCNN()
    variables = _init(model, _key(1), x)
    # Non-trivial BatchNorm statistics, so that copying them is actually checked.
    stats = variables["batch_stats"]["stem_bn"]
    variables = {
        "params": variables["params"],
        "batch_stats": {"stem_bn": {"mean": stats["mean"] + 0.3, "var": stats["var"] * 1.7}},
    }
    return model, x, variables


def _key(seed):
    """An 'rbg' key: XLA:CPU compiles its generator ~5x faster than threefry's, keeping tests fast."""
    return jax.random.key(seed, impl="rbg")


def _init(module, key, x, **kwargs):
    """Jitted init: one compile is much cheaper on a shared CPU than many eager op dispatches."""
    return jax.jit(functools.partial(module.init, **kwargs))(key, x)


def _apply(module, variables, x, **kwargs):
    return jax.jit(functools.partial(module.apply, **kwargs))(variables, x)


def _subtree(tree, path):
    for name in path.split("/"):
        tree = tree[name]
    return tree


def test_report_lists_every_conv_with_status_and_reason(data):
    model, x, _ = data
    converted, report = convert(model, Rule(2, depthwise=False), x)
    assert isinstance(converted, CSRConverted)
    assert {r.path for r in report.records} == ALL_CONVS
    status = {r.path: r.status for r in report.records}
    converted_paths = {p for p, s in status.items() if s == "converted"}
    assert converted_paths == {"stem", "expand", "down", "block/conv_a", "block/conv_b"}
    assert status["dw"] == "unmatched" and "depthwise" in report["dw"].reason
    assert status["grouped"] == "unsupported" and "grouped" in report["grouped"].reason
    assert status["dilated"] == "unsupported" and "dilation" in report["dilated"].reason
    assert report["down"].strides == (2, 2) and report["down"].steps == 2
    assert (report["expand"].c_in, report["expand"].c_out, report["expand"].kernel_size) == (
        8,
        16,
        (1, 1),
    )
    text = str(report)
    for path in ALL_CONVS:
        assert path in text
    assert "kernel dilation" in text and "5 of 8 convs converted" in text


def test_params_before_after_match_real_variables(data):
    model, x, variables = data
    converted, report = convert(model, CSRPolicy(rules=(Rule(3, kernel_sizes=1), Rule(2))), x)
    new_vars = jax.eval_shape(lambda: converted.init(jax.random.key(0), x))
    for r in report.records:
        assert r.params_before == count_params(_subtree(variables["params"], r.path)), r.path
        assert r.params_after == count_params(_subtree(new_vars["params"], r.path)), r.path
    assert report["expand"].steps == 3 and report["stem"].steps == 2 and report["dw"].steps == 2
    assert report["dw"].depthwise and report["dw"].status == "converted"
    # Hand-computed: stem 3->8 3x3 with bias, T=2: g_in=2, g_out=4 -> 9*2*4 + 9*4*4 + 2 + 2*4.
    assert report["stem"].params_after == 72 + 144 + 2 + 8
    # Depthwise 16 channels 3x3 with bias, T=2: g=8 -> 2*9*8 + 2 + 2*8.
    assert report["dw"].params_after == 144 + 2 + 16
    assert report.model_params_before == count_params(variables)
    assert report.model_params_after == count_params(new_vars)
    assert report.conv_params_after < report.conv_params_before


def test_output_shapes_unchanged_and_unsupported_convs_stay_ordinary(data):
    model, x, variables = data
    converted, report = convert(model, Rule(2, depthwise=False), x)
    new_vars = _init(converted, _key(2), x)
    y = _apply(converted, new_vars, x)
    assert y.shape == jax.eval_shape(model.apply, variables, x).shape
    assert np.all(np.isfinite(np.asarray(y)))
    for r in report.records:
        leaf_names = set(_subtree(new_vars["params"], r.path))
        if r.converted:
            assert "kernel" not in leaf_names and "input_kernel" in leaf_names, r.path
        else:
            assert "kernel" in leaf_names, r.path
            old_kernel = _subtree(variables["params"], r.path)["kernel"]
            assert _subtree(new_vars["params"], r.path)["kernel"].shape == old_kernel.shape
    # Everything outside the convs keeps its path and shape.
    assert new_vars["params"]["head"]["kernel"].shape == variables["params"]["head"]["kernel"].shape
    shapes = functools.partial(jax.tree_util.tree_map, jnp.shape)
    assert shapes(new_vars["batch_stats"]) == shapes(variables["batch_stats"])


def test_t1_conversion_with_copied_weights_reproduces_the_model(data):
    model, x, variables = data
    converted, report = convert(model, Rule(1), x, t1_as_csr=True)
    assert {r.path for r in report.converted} == ALL_CONVS - {"grouped", "dilated"}
    new_vars = transfer_weights(variables, _init(converted, _key(5), x), report)
    np.testing.assert_allclose(
        _apply(converted, new_vars, x), _apply(model, variables, x), rtol=1e-5, atol=1e-5
    )
    y_new, upd_new = _apply(converted, new_vars, x, train=True, mutable=["batch_stats"])
    y_old, upd_old = _apply(model, variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y_new, y_old, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        upd_new["batch_stats"]["stem_bn"]["var"],
        upd_old["batch_stats"]["stem_bn"]["var"],
        rtol=1e-6,
    )


def test_transfer_weights_keeps_t_gt_1_layers_and_rejects_foreign_variables(data):
    model, x, variables = data
    converted, report = convert(
        model, [Rule(1, path="^stem$"), Rule(2, path="block")], x, t1_as_csr=True
    )
    fresh = _init(converted, _key(3), x)
    moved = transfer_weights(variables, fresh, report)
    np.testing.assert_array_equal(
        moved["params"]["stem"]["input_kernel"], variables["params"]["stem"]["kernel"]
    )
    np.testing.assert_array_equal(
        moved["params"]["down"]["kernel"], variables["params"]["down"]["kernel"]
    )
    np.testing.assert_array_equal(
        moved["params"]["block"]["conv_a"]["input_kernel"],
        fresh["params"]["block"]["conv_a"]["input_kernel"],
    )
    other = jax.eval_shape(ForeignCNN(num_classes=7).init, jax.random.key(4), x)
    with pytest.raises(SurgeryError, match="shape mismatch at params/head/"):
        transfer_weights(other, fresh, report)


def test_converted_layer_is_the_csr_layer():
    """For T > 1 the replaced conv computes exactly ``CSRConv`` with the conv's settings."""

    class One(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(10, (3, 3), strides=2, padding=((1, 0), (0, 1)), name="c")(x)

    x = np.random.default_rng(1).normal(size=(2, 9, 9, 7)).astype(np.float32)
    converted, report = convert(One(), Rule(3), x)
    v = _init(converted, _key(1), x)
    layer = CSRConv(10, (3, 3), 3, strides=2, padding=((1, 0), (0, 1)), use_bias=True)
    y = _apply(converted, v, x)
    np.testing.assert_allclose(
        y, _apply(layer, {"params": v["params"]["c"]}, x), rtol=1e-6, atol=1e-6
    )
    assert report["c"].out_hw == (4, 4)  # (9 + 1 - 3) // 2 + 1


def test_path_regex_and_channel_filters(data):
    model, x, _ = data
    _, report = convert(model, Rule(2, path=r"^block/", exclude="conv_b"), x)
    assert {r.path for r in report.converted} == {"block/conv_a"}
    assert (
        "exclude" in report["block/conv_b"].reason and "path not matched" in report["stem"].reason
    )

    _, report = convert(model, Rule(2, min_in_channels=8), x)
    assert report["stem"].status == "unmatched" and "min_in_channels" in report["stem"].reason
    assert report["expand"].converted

    _, report = convert(
        model, Rule(2, min_out_channels=13, kernel_sizes=(1, 3), depthwise=False), x
    )
    assert {r.path for r in report.converted} == {"expand"}  # the only C_out >= 13 plain conv

    # A T = 1 rule carves an exception out of a broader rule below it.
    _, report = convert(model, [Rule(1, path="down"), Rule(2)], x)
    assert report["down"].status == "kept" and report["down"].rule == 0 and report["stem"].rule == 1


def test_only_if_smaller(data):
    model, x, _ = data
    _, report = convert(model, Rule(2, only_if_smaller=True), x)
    # stem 3->8 3x3 with bias: conv 9*3*8 + 8 = 224 params, CSR (T=2) 226, so it stays.
    assert report["stem"].status == "not_smaller" and report["stem"].params_after == 224
    assert report["expand"].converted


def test_unsupported_layers_are_reported_and_left_alone():
    class Odd(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.Conv(6, (2, 2), name="even")(x)  # even kernel, T > 1
            b = nn.Conv(6, (3, 3), padding="CIRCULAR", name="circ")(x)
            c = nn.Conv(6, (3, 3), input_dilation=2, padding=((1, 1), (1, 1)), name="in_dil")(x)
            d = nn.ConvTranspose(6, (3, 3), name="tconv")(x)
            e = nn.ConvLocal(6, (3, 3), name="local")(x)
            f = nn.Conv(6, (3,), name="conv1d")(x[:, 0])
            g = nn.Conv(6, (3, 3), name="narrow")(x[..., :2])  # 2 input channels < T
            h = nn.Conv(6, (3, 3), name="fine")(x)
            return a.sum() + b.sum() + c.sum() + d.sum() + e.sum() + f.sum() + g.sum() + h.sum()

    x = np.random.default_rng(2).normal(size=(1, 6, 6, 4)).astype(np.float32)
    converted, report = convert(Odd(), Rule(3), x)
    expected = {
        "even": "even kernel",
        "circ": "padding 'CIRCULAR'",
        "in_dil": "input dilation",
        "tconv": "ConvTranspose",
        "local": "ConvLocal",
        "conv1d": "1-D conv",
        "narrow": "exceeds",
    }
    for path, reason in expected.items():
        assert report[path].status == "unsupported" and reason in report[path].reason, (
            path,
            report[path].reason,
        )
    assert [r.path for r in report.converted] == ["fine"]
    v = _init(converted, _key(1), x)
    for path in expected:
        assert "kernel" in v["params"][path], path
    assert report.model_params_after == count_params(v)
    assert np.isfinite(float(_apply(converted, v, x)))


def test_jitted_gradient_step(data):
    model, x, _ = data
    # Two CSR layers (dense 1x1 with T=3, depthwise with T=2): compiling the backward pass of every
    # scanned hidden path would dominate this test's time on a shared CPU.
    converted, _ = convert(model, [Rule(3, path="expand"), Rule(2, path="dw")], x)
    variables = _init(converted, _key(0), x)
    labels = jnp.array([1, 3])
    tx = optax.sgd(0.1)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss_fn(p):
            logits, upd = converted.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd

        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), upd["batch_stats"], opt_state, loss, grads

    params, stats, opt_state, loss, grads = step(
        variables["params"], variables["batch_stats"], opt_state
    )
    assert np.isfinite(float(loss))
    for name in ("alpha", "beta", "hidden_kernel"):
        g = grads["dw"]["hidden"][name]
        assert float(jnp.abs(g).sum()) > 0, name
    assert not np.allclose(
        params["expand"]["hidden"]["hidden_kernel"],
        variables["params"]["expand"]["hidden"]["hidden_kernel"],
    )
    _, _, _, loss2, _ = step(params, stats, opt_state)
    assert float(loss2) < float(loss)


def test_setup_style_model_and_other_methods():
    """Submodules defined in setup() convert too, and every method of the model is forwarded."""

    class EncoderDecoder(nn.Module):
        def setup(self):
            self.enc = nn.Conv(6, (3, 3))
            self.dec = nn.Conv(4, (1, 1))

        def encode(self, x):
            return self.enc(x)

        def __call__(self, x):
            return self.dec(nn.relu(self.encode(x)))

    x = np.random.default_rng(3).normal(size=(1, 5, 5, 4)).astype(np.float32)
    converted, report = convert(EncoderDecoder(), Rule(2), x)
    assert {r.path for r in report.converted} == {"enc", "dec"}
    v = _init(converted, _key(0), x, method="encode")
    assert set(v["params"]) == {"enc"} and "input_kernel" in v["params"]["enc"]
    assert _apply(converted, v, x, method="encode").shape == (1, 5, 5, 6)
    assert _apply(converted, v, x, method=converted.encode).shape == (1, 5, 5, 6)


def test_static_call_arguments_and_nesting_in_a_larger_model(data):
    model, x, _ = data
    # train=True is a Python bool the model branches on: convert must keep it static.
    converted, report = convert(model, Rule(2, path="^block/"), x, train=True)
    assert {r.path for r in report.converted} == {"block/conv_a", "block/conv_b"}
    assert converted.num_classes == 5  # fields of the model are forwarded too

    class Outer(nn.Module):
        inner: nn.Module

        @nn.compact
        def __call__(self, x):
            return self.inner(x) * 2.0

    # Inside a larger model, paths stay relative to the converted model, so '^block/' still fits.
    shapes = jax.eval_shape(Outer(converted).init, jax.random.key(0), x)
    inner = shapes["params"]["inner"]
    assert "input_kernel" in inner["block"]["conv_a"] and "kernel" in inner["down"]


def test_bad_policies_raise_clear_errors(data):
    model, x, _ = data
    with pytest.raises(PolicyError, match="empty|policy"):
        convert(model, [], x)
    with pytest.raises(PolicyError, match="not a Rule"):
        convert(model, [Rule(2), "t2"], x)
    with pytest.raises(PolicyError, match="rule 1"):
        convert(model, [Rule(2), Rule(3, path="stem")], x)  # shadowed by rule 0
    with pytest.raises(PolicyError, match="match no conv") as e:
        convert(model, Rule(2, path="no_such_layer"), x)
    assert "block/conv_a" in str(e.value) and "allow_unused_rules=True" in str(e.value)
    _, report = convert(
        model, [Rule(2, path="stem"), Rule(3, path="nothing")], x, allow_unused_rules=True
    )
    assert report.unused_rules == (1,) and "UNUSED" in str(report)
    with pytest.raises(SurgeryError, match="unbound"):
        convert(model.bind({}), Rule(2), x)


def test_the_backbone_policy_type_drives_surgery_and_roles_say_they_need_a_backbone(data):
    model, x, _ = data
    policy = CSRPolicy.from_json(
        CSRPolicy(rules=(Rule(1, path="conv_b"), Rule(2, path="block"))).to_json()
    )
    _, report = convert(model, policy, x)
    assert report["block/conv_b"].status == "kept" and report["block/conv_a"].steps == 2
    assert report.policy == policy
    with pytest.raises(PolicyError, match="no roles or blocks"):
        convert(model, Rule(2, roles=("expand",)), x)
    import csr_jax.surgery

    with pytest.raises(AttributeError, match="Rule"):
        csr_jax.surgery.ConvRule  # noqa: B018  (the old name says what replaced it)


def test_use_conv_init_takes_the_convs_initializers():
    class Zeros(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(4, (1, 1), kernel_init=nn.initializers.zeros, name="c")(x)

    x = np.ones((1, 3, 3, 4), np.float32)
    plain, _ = convert(Zeros(), Rule(2), x)
    mine, _ = convert(Zeros(), Rule(2, use_conv_init=True), x)
    assert float(jnp.abs(_init(plain, _key(0), x)["params"]["c"]["input_kernel"]).sum()) > 0
    assert float(jnp.abs(_init(mine, _key(0), x)["params"]["c"]["input_kernel"]).sum()) == 0
