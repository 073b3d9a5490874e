"""A full CSR policy carried by an experiment config, as JSON text or a .json file, reaches the
model through the training-config path (``csr_setting`` -> ``models.create`` -> the one abstract
trace, ``models.abstract_init``, which also checks the policy) and is saved with the run's record."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from csr_jax import data as data_lib
from csr_jax import models
from csr_jax.policy import CSRPolicy, PolicyError, Rule
from csr_jax.train import ConfigError
from csr_jax.train.run_config import config_record, csr_setting, model_overrides
from experiments.configs import digits

# Blocks 1..3 stay ordinary, every other 3x3 block conv becomes CSR with T = 3.
POLICY = CSRPolicy(
    rules=(Rule(1, blocks=(1, 3)), Rule(3, roles=("conv3x3",), min_channels=3)),
    name="late_t3",
    description="CSR from block 4 on",
)


def _config(csr: str):
    config = digits.get_config("runlocal")
    config.csr = csr
    return config


def _build(config, csr):
    """What train_and_evaluate does before touching the workdir: the model, then its one trace."""
    info = data_lib.get_info(config.dataset, image_size=config.image_size)
    model = models.create(
        config.model,
        num_classes=info.num_classes,
        csr=csr,
        dtype=jnp.float32,
        check=False,
        **model_overrides(config),
    )
    return info, model, models.abstract_init(model, tuple(info.image_shape), name=config.model)


@pytest.mark.parametrize("form", ["json", "file"])
def test_a_config_carries_a_full_policy_to_the_model(form, tmp_path):
    if form == "json":
        text = POLICY.to_json()
    else:
        text = str(tmp_path / "policy.json")
        (tmp_path / "policy.json").write_text(POLICY.to_json(indent=2))
    config = _config(text)
    csr = csr_setting(config)
    assert csr == POLICY.to_dict()
    info, model, variables = _build(config, csr)
    assert model.conv.policy == POLICY
    params = variables["params"]
    assert set(params["block_3"]["conv1"]) == {"kernel"}  # kept ordinary by rule 0
    assert "input_kernel" in params["block_4"]["conv1"] and "hidden" in params["block_9"]["conv2"]
    assert "kernel" in params["stem"]  # no rule matches the stem
    assert config_record(config, info)["csr"] == POLICY.to_dict()  # what a resumed run compares


def test_bad_policy_text_in_a_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not parse"):
        csr_setting(_config('{"rules": [{"steps": 2,}]}'))
    with pytest.raises(ConfigError, match="does not exist"):
        csr_setting(_config(str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match="Unknown rule field"):
        csr_setting(_config('{"rules": [{"steps": 2, "role": ["conv3x3"]}]}'))
    config = _config(
        '{"rules": [{"steps": 2, "roles": ["transition"]}]}'
    )  # no such role in ResNet-20
    with pytest.raises(PolicyError, match="match no conv"):
        _build(config, csr_setting(config))
