"""CSR policies: validation, matching semantics, serialisation, presets, and the reference
MobileNetV2 configurations (docs/backbones.md §2) checked on the built networks."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from csr_jax import models
from csr_jax.csr_conv import CSRConv
from csr_jax.policy import (
    ROLES,
    ConvSite,
    CSRPolicy,
    PolicyError,
    Presets,
    Rule,
    TPreset,
    check_coverage,
    decide,
    parse_csr,
)


def site(role="conv3x3", block=1, path="block_1/conv1", c_in=64, c_out=64, k=3, groups=1):
    return ConvSite(
        path=path,
        role=role,
        block=block,
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=(k, k),
        groups=groups,
    )


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
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
        (dict(steps=2, exclude="("), "regular expression"),
        (dict(steps=2, kernel_sizes="3x3"), "kernel_sizes"),
        (dict(steps=2, kernel_sizes=(0,)), "kernel_sizes"),
        (dict(steps=2, min_in_channels=0), "min_in_channels"),
        (dict(steps=2, groups=0), "groups"),
        (dict(steps=2, depthwise="yes"), "depthwise"),
        (dict(steps=2, use_conv_init=1), "use_conv_init"),
    ],
)
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
    assert policy.decide(site(path="block_2/conv1", block=2)).steps == 1  # excluded by rule 0
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
    assert not rule.matches(site(path="block_3/conv2", c_in=16, c_out=64))  # min(C_in, C_out) < 32


def test_kernel_size_channel_group_and_exclude_selectors_say_why_they_miss():
    conv1x1 = site(path="block_1/expand", c_in=16, c_out=96, k=1)
    dw = site(role="depthwise", path="block_1/depthwise", c_in=96, c_out=96, k=3, groups=96)
    assert Rule(2, kernel_sizes=1).matches(conv1x1) and not Rule(2, kernel_sizes=(3, 5)).matches(
        conv1x1
    )
    assert Rule(2, kernel_sizes=[(1, 1)]).kernel_sizes == ((1, 1),)
    assert "kernel 1x1 not in (3x3, 5x5)" in Rule(2, kernel_sizes=(3, 5)).mismatch(conv1x1)
    assert "C_in=16 < min_in_channels=32" in Rule(2, min_in_channels=32).mismatch(conv1x1)
    assert Rule(2, min_out_channels=96).matches(conv1x1)
    assert "exclude" in Rule(2, path="block_1", exclude="expand$").mismatch(conv1x1)
    assert Rule(2, groups=96).matches(dw) and not Rule(2, groups=96).matches(conv1x1)
    assert Rule(2, depthwise=True).matches(dw) and not Rule(2, depthwise=True).matches(conv1x1)
    assert "depthwise conv" in Rule(2, depthwise=False).mismatch(dw)
    assert Rule(2).matches(dw)  # depthwise=None matches both
    foreign = ConvSite(
        path="enc/Conv_0", role=None, block=None, in_channels=8, out_channels=8, kernel_size=(3, 3)
    )
    assert "no role" in Rule(2, roles=("conv3x3",)).mismatch(foreign)
    decision = CSRPolicy(rules=(Rule(2, roles=("conv3x3",)), Rule(3, path="dec"))).decide(foreign)
    assert decision.status == "unmatched" and "rule 0: the conv has no role" in decision.reason
    assert "rule 1: path not matched" in decision.reason


def test_rule_dict_round_trip_with_every_selector():
    rule = Rule(
        3,
        roles=("expand",),
        blocks=(2, 4),
        path="a",
        exclude="b",
        kernel_sizes=(1, (1, 3)),
        min_channels=2,
        min_in_channels=4,
        min_out_channels=5,
        groups=1,
        depthwise=False,
        only_if_smaller=True,
        use_conv_init=True,
    )
    data = json.loads(json.dumps(rule.to_dict()))
    assert data["kernel_sizes"] == [[1, 1], [1, 3]] and Rule.from_dict(data) == rule
    assert rule.describe().startswith("Rule(steps=3, roles=['expand']")


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

ALL_PRESETS = [
    (name, preset) for name in models.list_models() for preset in models.list_presets(name)
]


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
        rules=(
            Rule(1, path="block_1/"),
            Rule(3, roles=("expand", "head"), blocks=(2, 9), min_channels=8, only_if_smaller=True),
        ),
        name="mine",
        description="why",
    )
    data = policy.to_dict()
    assert data["rules"][1] == {
        "steps": 3,
        "roles": ["expand", "head"],
        "blocks": [2, 9],
        "min_channels": 8,
        "only_if_smaller": True,
    }
    assert CSRPolicy.from_dict(data) == policy


def test_t_presets_follow_their_number_and_t1_is_ordinary():
    assert {r.steps for r in models.get_policy("resnet20", "t7").rules} == {7}
    assert {r.steps for r in models.get_policy("densenet40", "t1").rules} == {1}
    with pytest.raises(PolicyError, match=r"'t0' must be an integer >= 1"):
        models.get_policy("resnet56", "t0")
    with pytest.raises(PolicyError, match="valid"):
        models.get_policy("resnet56", "reference")  # only MobileNetV2 has the authors' preset


def test_t_preset_data_becomes_rules_on_the_roles_where_csr_pays():
    t = TPreset(always=("project",), where_smaller=("expand", "head"), why="because")
    policy = t.policy(3, "t3")
    assert policy.rules == (
        Rule(3, roles=("project",), min_channels=3),
        Rule(3, roles=("expand", "head"), min_channels=3, only_if_smaller=True),
    )
    assert policy.description.startswith("because T = 3 throughout")
    assert TPreset(always=("conv3x3",), why="w").policy(2, "t2").rules == (
        Rule(2, roles=("conv3x3",), min_channels=2),
    )
    presets = Presets(
        t=t, named={"mine": CSRPolicy(rules=(Rule(2),), name="mine", description="d")}
    )
    assert presets.names() == ["mine", "t2", "t3", "t4", "t8"]
    assert presets.reasons() == {"mine": "d", "t{N}": "because"}
    assert presets.get("mine").name == "mine" and presets.get("t5").rules[0].steps == 5
    with pytest.raises(PolicyError, match="Unknown role"):
        TPreset(always=("bogus",), why="")


def test_parse_csr_reads_json_text_and_policy_files_and_leaves_preset_names(tmp_path):
    policy = CSRPolicy(rules=(Rule(2, roles=("conv3x3",)),), name="mine")
    assert parse_csr("t2") == "t2" and parse_csr(None) is None and parse_csr(policy) is policy
    assert parse_csr("  " + policy.to_json()) == policy.to_dict()
    path = tmp_path / "p.json"
    path.write_text(policy.to_json(indent=2))
    assert CSRPolicy.from_dict(parse_csr(str(path))) == policy
    with pytest.raises(PolicyError, match="does not exist"):
        parse_csr(str(tmp_path / "nope.json"))
    with pytest.raises(PolicyError, match="object with 'rules'"):
        path.write_text("[1, 2]")
        parse_csr(str(path))


# ------------------------------------------------------------------ against a model


def test_unknown_preset_and_model_errors_list_the_valid_names():
    with pytest.raises(PolicyError) as e:
        models.create("resnet20", num_classes=10, csr="t2x")
    assert "t2x" in str(e.value) and "t4" in str(e.value)
    with pytest.raises(ValueError) as e:
        models.create("resnet21", num_classes=10)
    assert "resnet20" in str(e.value) and "mobilenetv2_cifar" in str(e.value)


@pytest.mark.parametrize(
    "rules, what",
    [
        ((Rule(2, roles=("transition",)),), "transition"),  # a role resnet20 does not have
        ((Rule(2, blocks=(10, 12)),), "blocks"),  # resnet20 has blocks 1..9
        ((Rule(2, path="bottleneck"),), "bottleneck"),  # no such path
        (
            (Rule(2, roles=("conv3x3",)), Rule(3, roles=("conv3x3",), blocks=(1, 3))),
            "rule 1",
        ),  # shadowed
    ],
)
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
    model = models.create(
        "resnet20", num_classes=10, csr={"rules": [{"steps": 2, "roles": ["conv3x3"]}]}
    )
    assert model.conv.policy == CSRPolicy(rules=(Rule(2, roles=("conv3x3",)),))


# ------------------------------------------- the authors' reference configurations (docs/backbones.md §2)


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
            return model.init(
                {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False
            )

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
    conv_params = [
        n for n in _param_names(variables["params"]) if n[1:2] in (("expand",), ("project",))
    ]
    assert len(conv_params) >= 34 * 2 and not any("bias" in n[-1] for n in conv_params)


def test_imagenet_reference_is_blocks_6_to_17_only():
    convs, _ = reference_build("mobilenetv2")
    csr = {path: steps for path, kind, steps, *_ in convs if kind == "csr"}
    expected = {f"block_{i}/expand": 3 for i in range(6, 18)} | {
        f"block_{i}/project": 4 for i in range(6, 18)
    }
    assert csr == expected
    ordinary = {path for path, kind, *_ in convs if kind == "conv"}
    # torchvision's first block (t = 1) has no expand conv.
    assert "block_1/expand" not in ordinary and "block_1/project" in ordinary
    assert {f"block_{i}/{c}" for i in range(2, 6) for c in ("expand", "project")} <= ordinary
    assert {f"block_{i}/depthwise" for i in range(1, 18)} | {"stem", "head"} <= ordinary
    assert len(convs) == 1 + 16 + 17 + 17 + 1
