"""Backbones and registry: the standard parameter counts (docs/backbones.md §1), shapes and dtypes of every registered
model (ordinary and CSR, abstractly with jax.eval_shape), CSR counts against the closed form,
and real forward/backward passes of every family at reduced width and depth."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from csr_jax import models
from csr_jax.accounting import conv_params, count_params, csr_conv_params
from csr_jax.csr_conv import CSRConv

KEYS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

# docs/backbones.md §1: the standard parameter counts our ordinary (non-CSR) backbones reproduce.
STANDARD_PARAMS = {
    "vgg16_cifar": 14_728_266,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "densenet40": 1_019_722,
    "mobilenetv2_cifar": 2_237_770,
    "resnet50": 25_557_032,
    "mobilenetv2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    "vgg16_bn": 138_365_992,
}


def num_classes(name):
    return 10 if models.default_input_shape(name) == (32, 32, 3) else 1000


def test_registry_lists_the_paper_backbones():
    required = {
        "vgg16_cifar",
        "vgg16_bn",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet50",
        "densenet40",
        "mobilenetv2_cifar",
        "mobilenetv2",
        "efficientnet_b0",
    }
    listed = models.list_models()
    assert required <= set(listed) and listed == sorted(listed)
    assert models.default_input_shape("resnet110") == (32, 32, 3)
    assert models.default_input_shape("efficientnet_b0") == (224, 224, 3)
    assert models.list_presets("mobilenetv2")[0] == "reference"
    assert "reference" not in models.list_presets("resnet50")


def test_registry_rejects_bad_arguments_clearly():
    with pytest.raises(ValueError, match="valid models"):
        models.default_input_shape("resnet-56")
    with pytest.raises(TypeError, match=r"width_mult.*valid: .*widths"):
        models.create("resnet20", num_classes=10, width_mult=0.5)
    with pytest.raises(TypeError, match="blocks_per_stage"):
        models.create("resnet20", num_classes=10, blocks_per_stage=2)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(TypeError, match="csr must be"):
        models.create("resnet20", num_classes=10, csr=2)


@pytest.mark.parametrize("name", sorted(STANDARD_PARAMS))
def test_ordinary_parameter_count_matches_spec(name):
    model = models.create(name, num_classes=num_classes(name))
    x = jax.ShapeDtypeStruct((1, *models.default_input_shape(name)), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), KEYS, x)
    assert count_params(variables) == STANDARD_PARAMS[name]
    assert count_params(variables["batch_stats"]) > 0  # running statistics exist, outside 'params'


def conv_layers(model, x, train):
    """Abstractly (jax.eval_shape) initialise ``model`` and run it once in eval mode and, with
    ``train``, once in train mode; return {path: (kind, c_in, c_out, kernel, groups, steps, use_bias)}
    of every conv the network really runs (seen by an interceptor, independently of the policy's
    bookkeeping), the variables, the eval-mode logits and the train-mode (logits, updates)."""
    found = {}

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        m = context.module
        if context.method_name == "__call__" and isinstance(m, (CSRConv, nn.Conv)):
            c_in, c_out = args[0].shape[-1], y.shape[-1]
            if isinstance(m, CSRConv):
                info = (
                    "csr",
                    c_in,
                    c_out,
                    m.kernel_size,
                    c_in if m.depthwise else 1,
                    m.steps,
                    m.use_bias,
                )
            else:
                info = (
                    "conv",
                    c_in,
                    c_out,
                    tuple(m.kernel_size),
                    m.feature_group_count,
                    1,
                    m.use_bias,
                )
            found["/".join(m.path)] = info
        return y

    def run(x):
        with nn.intercept_methods(interceptor):
            logits, variables = model.init_with_output(KEYS, x, train=False)
        if not train:
            return variables, logits, None
        return (
            variables,
            logits,
            model.apply(
                variables,
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            ),
        )

    return found, *jax.eval_shape(run, x)


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_builds_ordinary_and_csr_with_closed_form_counts(name):
    """Ordinary in float32 (eval and train mode), CSR (the first preset) in bfloat16: shapes,
    dtypes, and the CSR network's parameter count equals the ordinary one with each replaced
    conv's count swapped for the closed-form CSR count of csr_jax.accounting."""
    classes = num_classes(name)
    x = jax.ShapeDtypeStruct((2, *models.default_input_shape(name)), jnp.float32)
    ordinary = models.create(name, num_classes=classes)
    csr = models.create(
        name, num_classes=classes, csr=models.list_presets(name)[0], dtype=jnp.bfloat16
    )

    convs, variables, eval_out, (train_out, updates) = conv_layers(ordinary, x, train=True)
    assert {kind for kind, *_ in convs.values()} == {"conv"}
    csr_convs, csr_vars, csr_out, _ = conv_layers(csr, x, train=False)
    for out in (train_out, eval_out, csr_out):
        assert out.shape == (2, classes) and out.dtype == jnp.float32
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"]
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(csr_vars["params"])} == {jnp.dtype(jnp.float32)}

    assert csr_convs.keys() == convs.keys()  # same layers, same paths, some of them CSR
    replaced = {path: info for path, info in csr_convs.items() if info[0] == "csr"}
    assert replaced
    expected = count_params(variables)
    for path, (_, c_in, c_out, kernel, groups, steps, use_bias) in replaced.items():
        assert convs[path][1:3] == (c_in, c_out)
        expected -= conv_params(c_in, c_out, kernel, use_bias=use_bias, groups=groups)
        expected += csr_conv_params(
            c_in, c_out, kernel, steps, use_bias=use_bias, depthwise=groups > 1
        )
    assert count_params(csr_vars) == expected < count_params(variables)


def test_bf16_compute_keeps_f32_params_and_runs_convs_in_bf16():
    model = models.create("mobilenetv2_cifar", num_classes=10, csr="reference", dtype=jnp.bfloat16)
    dtypes = set()

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(
            context.module, (CSRConv, nn.Conv, nn.Dense)
        ):
            dtypes.add((type(context.module).__name__, y.dtype))
        return y

    def run(x):
        with nn.intercept_methods(interceptor):
            return model.init_with_output(KEYS, x, train=False)

    logits, variables = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    bf16 = jnp.dtype(jnp.bfloat16)
    assert dtypes == {("CSRConv", bf16), ("Conv", bf16), ("Dense", bf16)}
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_built_csr_count_falls_as_T_grows():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    counts = []
    for t in (1, 2, 3, 4, 8):
        model = models.create("vgg16_cifar", num_classes=10, csr=f"t{t}")
        counts.append(
            count_params(jax.eval_shape(functools.partial(model.init, train=False), KEYS, x))
        )
    assert counts[0] == STANDARD_PARAMS["vgg16_cifar"]  # t1 is the ordinary network
    assert all(a > b for a, b in zip(counts, counts[1:])), counts


@pytest.mark.parametrize("name", models.list_models())
def test_planned_csr_count_falls_as_T_grows(name):
    """For every model, from its conv plan and the closed-form counts (which the test above and
    test_every_model_builds... tie to the built networks): more steps, fewer parameters."""
    model = models.create(name, num_classes=num_classes(name))
    sites = [s for s, _ in models.conv_plan(model, models.default_input_shape(name))]
    ordinary = sum(
        conv_params(
            s.in_channels, s.out_channels, s.kernel_size, use_bias=s.use_bias, groups=s.groups
        )
        for s in sites
    )
    totals = []
    for t in (2, 3, 4, 8):
        policy = models.get_policy(name, f"t{t}")
        total = 0
        for s in sites:
            steps = policy.decide(s).steps
            total += (
                conv_params(
                    s.in_channels,
                    s.out_channels,
                    s.kernel_size,
                    use_bias=s.use_bias,
                    groups=s.groups,
                )
                if steps == 1
                else csr_conv_params(
                    s.in_channels,
                    s.out_channels,
                    s.kernel_size,
                    steps,
                    use_bias=s.use_bias,
                    depthwise=s.depthwise,
                )
            )
        totals.append(total)
    assert ordinary > totals[0] and all(a > b for a, b in zip(totals, totals[1:])), (
        ordinary,
        totals,
    )


# ---------------------------------------------------------------------------- real passes


def small(name, csr):
    """The family of registered model ``name`` at reduced width and depth (every code path of the
    family is still taken: stems, stride-2 and shape-changing blocks, residuals, heads), ordinary
    or with CSR preset ``csr``."""
    conv = models.ConvFactory(policy=models.get_policy(name, csr))
    if name == "vgg16_cifar":
        return models.VGG(
            10, head="cifar", widths=(8, 8, 16, 16, 16), depths=(1, 1, 2, 1, 1), conv=conv
        ), 32
    if name == "vgg16_bn":
        return models.VGG(
            10,
            head="imagenet",
            widths=(4, 4, 8, 8, 8),
            depths=(1, 1, 1, 1, 1),
            fc_width=16,
            conv=conv,
        ), 64
    if name == "resnet20":
        return models.CifarResNet(10, blocks_per_stage=2, widths=(4, 8, 8), conv=conv), 32
    if name == "resnet50":
        return models.ImageNetResNet(10, stage_sizes=(1, 1), widths=(4, 8), conv=conv), 64
    if name == "densenet40":
        return models.DenseNet(10, depth=10, growth_rate=4, init_features=8, conv=conv), 32
    cfg = ((1, 16, 1, 1), (6, 24, 2, 2))
    if name == "mobilenetv2_cifar":
        return models.MobileNetV2(10, variant="cifar", width_mult=0.25, cfg=cfg, conv=conv), 32
    if name == "mobilenetv2":
        return models.MobileNetV2(10, variant="imagenet", width_mult=0.25, cfg=cfg, conv=conv), 64
    if name == "efficientnet_b0":
        return models.EfficientNet(
            10, width_mult=0.5, cfg=((1, 3, 1, 16, 1), (6, 5, 2, 24, 2)), conv=conv
        ), 64
    raise KeyError(name)


def compile_fast(fn, *args):
    """jit with XLA's backend optimisation off: these tests run each program once, and on CPU the
    default optimisation level costs more compile time than it saves."""
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile({"xla_backend_optimization_level": 0})
    except Exception:  # an XLA build without that option: compile normally
        return lowered.compile()


def passes(model, x, labels, grad_step, lr=0.05):
    """One compiled program: init, a train-mode pass (with ``grad_step``: its gradient, one SGD
    step and the loss after it), and an eval-mode pass that may mutate batch_stats."""

    def loss_fn(params, batch_stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(2)},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (
            logits,
            updates,
        )

    def run(x):
        variables = model.init(KEYS, x, train=False)
        params, stats = variables["params"], variables["batch_stats"]
        out = dict(params=params, stats=stats)
        if grad_step:
            (out["loss0"], (out["train_logits"], updates)), grads = jax.value_and_grad(
                loss_fn, has_aux=True
            )(params, stats)
            out["loss1"], _ = loss_fn(jax.tree.map(lambda p, g: p - lr * g, params, grads), stats)
        else:
            out["loss0"], (out["train_logits"], updates) = loss_fn(params, stats)
        out["updates"] = updates["batch_stats"]
        out["eval_logits"], eval_updates = model.apply(
            variables, x, train=False, mutable=["batch_stats"]
        )
        out["eval_updates"] = eval_updates["batch_stats"]
        return out

    return compile_fast(run, x)(x)


CIFAR_NETS = ("vgg16_cifar", "resnet20", "densenet40", "mobilenetv2_cifar")
CASES = [
    (name, None)
    for name in (
        "vgg16_cifar",
        "vgg16_bn",
        "resnet20",
        "resnet50",
        "densenet40",
        "mobilenetv2_cifar",
        "mobilenetv2",
        "efficientnet_b0",
    )
]
# Real passes through CSR networks: the authors' configuration, a plain 3x3 family, and the
# family whose preset also converts biased squeeze-and-excitation convs.
CASES += [("mobilenetv2_cifar", "reference"), ("resnet20", "t2"), ("efficientnet_b0", "t3")]


@pytest.mark.parametrize("name, csr", CASES, ids=[f"{n}-{c or 'ordinary'}" for n, c in CASES])
def test_forward_train_eval_and_a_gradient_step(name, csr):
    model, size = small(name, csr)
    x = jax.random.normal(jax.random.key(3), (4, size, size, 3))
    labels = jnp.array([0, 3, 7, 9])
    out = passes(model, x, labels, grad_step=name in CIFAR_NETS)

    assert out["train_logits"].shape == out["eval_logits"].shape == (4, 10)
    assert (
        np.isfinite(np.asarray(out["train_logits"])).all()
        and np.isfinite(np.asarray(out["eval_logits"])).all()
    )
    # Train mode normalises with batch statistics and updates the running ones; eval mode uses
    # the running statistics and leaves them alone, so the two modes give different outputs.
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), out["stats"], out["updates"])
    assert all(jax.tree.leaves(changed))
    kept = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), out["stats"], out["eval_updates"])
    assert all(jax.tree.leaves(kept))
    assert not np.allclose(out["train_logits"], out["eval_logits"])
    paths = [
        "/".join(str(k.key) for k in p)
        for p, _ in jax.tree_util.tree_flatten_with_path(out["params"])[0]
    ]
    assert any(p.endswith("alpha") for p in paths) == (
        csr is not None
    )  # CSR layers exist iff asked for
    if name in CIFAR_NETS:
        assert float(out["loss1"]) < float(
            out["loss0"]
        )  # one SGD step lowers the loss on this batch


def test_the_documented_new_backbone_is_one_file_plus_its_registration(monkeypatch):
    """docs/ARCHITECTURE.md's worked example, run as written: the file registers the model and
    its presets, and create() builds it with a t{N} and a named preset."""
    import re
    import sys
    import types
    from pathlib import Path

    from csr_jax.models import registry

    doc = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    source = re.search(r"Worked example.*?```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.setattr(
        registry, "_MODELS", dict(registry._MODELS)
    )  # the registration is undone after
    module = types.ModuleType("tinynet_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, "ARCHITECTURE.md", "exec"), module.__dict__)
    assert "tinynet" in models.list_models()
    assert models.list_presets("tinynet") == ["late", "t2", "t3", "t4", "t8"]
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    for preset, csr_blocks in (("t2", {1, 2, 3}), ("late", {2, 3})):
        model = models.create("tinynet", num_classes=10, csr=preset)
        shapes = jax.eval_shape(functools.partial(model.init, train=False), KEYS, x)["params"]
        assert {b for b in (1, 2, 3) if "input_kernel" in shapes[f"block_{b}"]} == csr_blocks, (
            preset
        )
        assert "kernel" in shapes["stem"]
