"""CSR policies: validation, matching semantics, serialisation, presets, and the reference
MobileNetV2 configurations checked against SPEC.md on the built networks."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from csr_jax import models
from csr_jax.csr_conv import CSRConv
from csr_jax.policy import ROLES, ConvSite, CSRPolicy, PolicyError, Rule, check_coverage, decide, get_preset


def site(role="conv3x3", block=1, path="block_1/conv1", c_in=64, c_out=64, k=3, groups=1):
    return ConvSite(path=path, role=role, block=block, in_channels=c_in, out_channels=c_out,
                    kernel_size=(k, k), groups=groups)


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"),
    (dict(steps=-2), "steps"),
    (dict(steps=2.0), "steps"),
    (dict(steps=True), "steps"),
    (dict(steps=2, roles=("expnad",)), "Unknown role"),
    (dict(steps=2, roles=()), "empty"),
    (dict(steps=2, blocks=(5, 2)), "empty"),
    (dict(steps=2, blocks=(0, 3)), "blocks"),
    (dict(steps=2, blocks=(1, 2, 3)), "range"),
    (dict(steps=2, path="block_(1"), "regular expression"),
    (dict(steps=2, min_channels=0), "min_channels"),
])
def test_bad_rules_raise(kwargs, message):
    with pytest.raises(PolicyError, match=message):
        Rule(**kwargs)


def test_unknown_role_error_lists_valid_roles():
    with pytest.raises(PolicyError) as e:
        Rule(3, roles=("expand", "squeeze"))
    assert "'squeeze'" in str(e.value) and all(r in str(e.value) for r in ROLES)


def test_bad_policy_dicts_raise():
    with pytest.raises(PolicyError, match="at least one rule"):
        CSRPolicy(rules=())
    with pytest.raises(PolicyError, match="Unknown rule field"):
        CSRPolicy.from_dict({"rules": [{"steps": 2, "role": ["expand"]}]})
    with pytest.raises(PolicyError, match="needs 'steps'"):
        CSRPolicy.from_dict({"rules": [{"roles": ["expand"]}]})
    with pytest.raises(PolicyError, match="needs 'rules'"):
        CSRPolicy.from_dict({"name": "x"})
    with pytest.raises(PolicyError, match="Unknown policy field"):
        CSRPolicy.from_dict({"rules": [{"steps": 2}], "extra": 1})


# ------------------------------------------------------------------ matching

def test_first_matching_rule_decides():
    policy = CSRPolicy(rules=(Rule(1, path=r"block_2/"), Rule(4, roles=("conv3x3",)), Rule(2)))
    assert policy.decide(site(path="block_2/conv1", block=2)).steps == 1   # excluded by rule 0
    assert policy.decide(site(path="block_2/conv1", block=2)).rule == 0
    assert policy.decide(site(path="block_3/conv1", block=3)).steps == 4
    assert policy.decide(site(role="stem", block=None, path="stem")).steps == 2
    assert policy.decide(site(role="stem", block=None, path="stem")).rule == 2


def test_block_range_is_inclusive_and_skips_convs_outside_blocks():
    rule = Rule(3, blocks=(6, 17))
    assert not rule.matches(site(block=5))
    assert rule.matches(site(block=6)) and rule.matches(site(block=17))
    assert not rule.matches(site(block=18))
    assert not rule.matches(site(role="head", block=None, path="head"))


def test_path_regex_and_min_channels():
    rule = Rule(2, path=r"conv2$", min_channels=32)
    assert rule.matches(site(path="block_3/conv2", c_in=32, c_out=64))
    assert not rule.matches(site(path="block_3/conv2_bn", c_in=32, c_out=64))
    assert not rule.matches(site(path="block_3/conv2", c_in=16, c_out=64))   # min(C_in, C_out) < 32


def test_unmatched_conv_stays_ordinary():
    policy = CSRPolicy(rules=(Rule(2, roles=("project",)),))
    assert policy.decide(site(role="expand")).steps == 1
    assert policy.decide(site(role="expand")).rule is None


def test_only_if_smaller_follows_the_closed_form_counts():
    # A 1x1 conv 32 -> 192 (expansion 6): CSR costs (32*192 + 192^2) / T^2 against 32*192,
    # i.e. 7/T^2 of the conv: larger at T=2 (7/4), smaller at T=3 (7/9).
    expand = site(role="expand", c_in=32, c_out=192, k=1)
    assert CSRPolicy(rules=(Rule(2, only_if_smaller=True),)).decide(expand).steps == 1
    assert CSRPolicy(rules=(Rule(3, only_if_smaller=True),)).decide(expand).steps == 3
    assert CSRPolicy(rules=(Rule(2),)).decide(expand).steps == 2  # without the flag it is replaced


def test_impossible_T_for_a_conv_is_an_error_that_says_how_to_skip_it():
    policy = CSRPolicy(rules=(Rule(4),))
    with pytest.raises(PolicyError, match="min_channels=4"):
        decide(policy, site(role="stem", block=None, path="stem", c_in=3, c_out=16))
    guarded = CSRPolicy(rules=(Rule(4, min_channels=4),))
    assert decide(guarded, site(role="stem", block=None, path="stem", c_in=3, c_out=16)).steps == 1


# ------------------------------------------------------------------ serialisation

ALL_PRESETS = [(name, preset) for name in models.list_models() for preset in models.list_presets(name)]


@pytest.mark.parametrize("name, preset", ALL_PRESETS)
def test_presets_round_trip_through_json_and_explain_themselves(name, preset):
    policy = models.get_policy(name, preset)
    assert isinstance(policy, CSRPolicy) and policy.name == preset
    assert len(policy.description) > 100  # the README quotes it
    again = CSRPolicy.from_json(policy.to_json())
    assert again == policy and hash(again) == hash(policy)
    assert CSRPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


def test_custom_policy_round_trip_keeps_every_field():
    policy = CSRPolicy(
        rules=(Rule(1, path="block_1/"), Rule(3, roles=("expand", "head"), blocks=(2, 9), min_channels=8,
                                             only_if_smaller=True)),
        name="mine", description="why")
    data = policy.to_dict()
    assert data["rules"][1] == {"steps": 3, "roles": ["expand", "head"], "blocks": [2, 9],
                                "min_channels": 8, "only_if_smaller": True}
    assert CSRPolicy.from_dict(data) == policy


def test_t_presets_follow_their_number_and_t1_is_ordinary():
    assert {r.steps for r in get_preset("resnet_cifar", "t7").rules} == {7}
    assert {r.steps for r in get_preset("densenet", "t1").rules} == {1}
    with pytest.raises(PolicyError, match=r"'t0' must be an integer >= 1"):
        get_preset("resnet_cifar", "t0")
    with pytest.raises(PolicyError, match="valid"):
        get_preset("resnet_cifar", "reference")  # only MobileNetV2 has the authors' preset


# ------------------------------------------------------------------ against a model

def test_unknown_preset_and_model_errors_list_the_valid_names():
    with pytest.raises(PolicyError) as e:
        models.create("resnet20", num_classes=10, csr="t2x")
    assert "t2x" in str(e.value) and "t4" in str(e.value)
    with pytest.raises(ValueError) as e:
        models.create("resnet21", num_classes=10)
    assert "resnet20" in str(e.value) and "mobilenetv2_cifar" in str(e.value)


@pytest.mark.parametrize("rules, what", [
    ((Rule(2, roles=("transition",)),), "transition"),          # a role resnet20 does not have
    ((Rule(2, blocks=(10, 12)),), "blocks"),                     # resnet20 has blocks 1..9
    ((Rule(2, path="bottleneck"),), "bottleneck"),               # no such path
    ((Rule(2, roles=("conv3x3",)), Rule(3, roles=("conv3x3",), blocks=(1, 3))), "rule 1"),  # shadowed
])
def test_policy_rule_that_matches_no_layer_is_an_error(rules, what):
    with pytest.raises(PolicyError) as e:
        models.create("resnet20", num_classes=10, csr=CSRPolicy(rules=rules, name="bad"))
    message = str(e.value)
    assert "match no conv" in message and what in message
    assert "conv3x3" in message and "1..9" in message  # tells what the model does have


@pytest.mark.parametrize("name", models.list_models())
def test_every_preset_fits_its_model(name):
    """What create() checks, for all presets of a model from one conv plan: every rule decides
    some conv, no conv gets more steps than channels, and every preset but t1 replaces convs."""
    shape = models.default_input_shape(name)
    sites = [s for s, _ in models.conv_plan(models.create(name, num_classes=10), shape)]
    for preset in ["t1", *models.list_presets(name)]:
        policy = models.get_policy(name, preset)
        decisions = [(s, decide(policy, s)) for s in sites]
        check_coverage(policy, decisions, name)
        replaced = sum(d.steps > 1 for _, d in decisions)
        assert (replaced > 0) == (preset != "t1"), (preset, replaced)


def test_dict_policy_is_accepted_like_a_config_would_pass_it():
    model = models.create("resnet20", num_classes=10, csr={"rules": [{"steps": 2, "roles": ["conv3x3"]}]})
    assert model.conv.policy == CSRPolicy(rules=(Rule(2, roles=("conv3x3",)),))


# ------------------------------------------------------------------ SPEC.md's reference configurations

def built_convs(model, input_shape):
    """(path, kind, steps, use_bias, depthwise) of every conv the built network really runs,
    observed with an interceptor (independently of the policy's own bookkeeping)."""
    found = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (CSRConv, nn.Conv)):
            path = "/".join(module.path)
            if isinstance(module, CSRConv):
                found.append((path, "csr", module.steps, module.use_bias, module.depthwise))
            else:
                found.append((path, "conv", 1, module.use_bias, module.feature_group_count > 1))
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(interceptor):
            return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)

    variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    return found, variables


def _param_names(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _param_names(value, prefix + (key,))
        else:
            yield prefix + (key,)


@functools.cache
def reference_build(name):
    model = models.create(name, num_classes=10 if name.endswith("cifar") else 1000, csr="reference")
    return built_convs(model, models.default_input_shape(name))


def test_cifar_reference_is_every_expand_T3_and_every_project_T4_without_bias():
    convs, variables = reference_build("mobilenetv2_cifar")
    csr = {path: (steps, bias, dw) for path, kind, steps, bias, dw in convs if kind == "csr"}
    expected = {f"block_{i}/expand": (3, False, False) for i in range(1, 18)}
    expected |= {f"block_{i}/project": (4, False, False) for i in range(1, 18)}
    assert csr == expected
    ordinary = {path for path, kind, *_ in convs if kind == "conv"}
    assert ordinary == {"stem", "head"} | {f"block_{i}/depthwise" for i in range(1, 18)}
    conv_params = [n for n in _param_names(variables["params"]) if n[1:2] in (("expand",), ("project",))]
    assert len(conv_params) >= 34 * 2 and not any("bias" in n[-1] for n in conv_params)


def test_imagenet_reference_is_blocks_6_to_17_only():
    convs, _ = reference_build("mobilenetv2")
    csr = {path: steps for path, kind, steps, *_ in convs if kind == "csr"}
    expected = {f"block_{i}/expand": 3 for i in range(6, 18)} | {f"block_{i}/project": 4 for i in range(6, 18)}
    assert csr == expected
    ordinary = {path for path, kind, *_ in convs if kind == "conv"}
    # torchvision's first block (t = 1) has no expand conv.
    assert "block_1/expand" not in ordinary and "block_1/project" in ordinary
    assert {f"block_{i}/{c}" for i in range(2, 6) for c in ("expand", "project")} <= ordinary
    assert {f"block_{i}/depthwise" for i in range(1, 18)} | {"stem", "head"} <= ordinary
    assert len(convs) == 1 + 16 + 17 + 17 + 1
