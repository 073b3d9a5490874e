"""Every config mistake is caught before the workdir is touched, in a line, with what to do.

In-process cases check `validate_config` / `train_and_evaluate` (ConfigError, nothing created);
three command-line cases check the exit code (2) and that no traceback is printed.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
import pytest

from csr_jax.train import ConfigError, UserError, train_and_evaluate, validate_config
from csr_jax.train.run_config import csr_setting
from csr_jax.train.validate import FIELDS
from tests import train_support as support

CONFIG_DIR = support.REPO / "experiments" / "configs"
RUN_CONFIGS = sorted(
    p.name
    for p in CONFIG_DIR.glob("*.py")
    if p.name not in ("__init__.py", "common.py") and "_common" not in p.name
)


def _tiny(tmp_path: Path) -> ml_collections.ConfigDict:
    return support.load_config(support.write_tiny_config(tmp_path))


def _with(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
    """`config` with `key` set to any value (type checks off, as a hand-written dict would be)."""
    values = config.to_dict()
    if key.startswith("model_overrides."):
        values["model_overrides"] = {**values["model_overrides"], key.split(".", 1)[1]: value}
    else:
        values[key] = value
    return ml_collections.ConfigDict(values, type_safe=False)


MISTAKES = [
    ("num_train_steps", 0, "num_train_steps must be an integer >= 1"),
    ("num_train_steps", -5, "num_train_steps must be an integer >= 1"),
    ("num_epochs", 0.0, "num_epochs must be a finite number in (0, inf)"),
    ("warmup_epochs", -1.0, "warmup_epochs must be a finite number in [0, inf)"),
    ("keep_checkpoints", 0, "keep_checkpoints must be an integer >= 1"),
    ("keep_checkpoints", -1, "keep_checkpoints must be an integer >= 1"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number in (0, inf)"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number"),
    ("learning_rate", 0.0, "learning_rate must be a finite number in (0, inf)"),
    ("momentum", 1.5, "momentum must be a finite number in [0, 1)"),
    ("label_smoothing", -0.1, "label_smoothing must be"),
    ("batch_size", True, "batch_size must be an integer >= 1"),
    ("seed", "zero", "seed must be an integer >= 0"),
    ("tensorboard", "yes", "tensorboard must be True or False"),
    ("weight_decay_exclude", "(", "a valid regular expression"),
    ("optimizer", "sgdd", "Unknown config.optimizer 'sgdd': did you mean 'sgd'?"),
    ("schedule", "cosin", "did you mean 'cosine'?"),
    ("dataset", "digit", "did you mean 'digits'?"),
    ("model", "resnt20", "Unknown config.model 'resnt20': did you mean 'resnet20'?"),
    ("dtype", "float23", "did you mean 'float32'?"),
    ("lerning_rate", 0.1, "Unknown config field 'lerning_rate': did you mean 'learning_rate'?"),
    ("model_overrides.widths", (8, 16), "widths for resnet20 must be 3 positive integers"),
    ("model_overrides.widths", (8, 0, 16), "must be 3 positive integers"),
    ("model_overrides.depth", 3, "resnet20 has no field 'depth' to override"),
    ("model_overrides.blocks_per_stage", 2, "blocks_per_stage"),  # Fixed by the model's name.
    ("csr", "t_nope", "Unknown CSR preset 't_nope'"),
]


@pytest.mark.parametrize("key,value,message", MISTAKES, ids=[f"{k}={v!r}" for k, v, _ in MISTAKES])
def test_each_mistake_is_one_line_naming_the_field(tmp_path, key, value, message):
    config = _with(_tiny(tmp_path), key, value)
    with pytest.raises(ConfigError) as e:
        validate_config(config, csr_setting(config))
    assert message in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_several_mistakes_are_reported_together(tmp_path):
    config = _with(_with(_tiny(tmp_path), "keep_checkpoints", 0), "optimizer", "lion")
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    assert "keep_checkpoints" in str(e.value) and "'lion'" in str(e.value)


def test_a_refused_config_leaves_no_workdir_and_writes_no_config(root, tmp_path):
    """A typo in `optimizer` used to write config.json first and so poison the workdir."""
    workdir = tmp_path / "run"
    config = _with(_tiny(tmp_path), "optimizer", "sgdd")
    with pytest.raises(ConfigError):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_config_errors_are_user_errors_with_exit_code_2():
    assert issubclass(ConfigError, UserError) and ConfigError.exit_code == 2


def test_validation_knows_every_field_of_the_base_config():
    """A new config field must get a type and a range here, or every run would refuse it."""
    import sys

    sys.path.insert(0, str(support.REPO))
    from experiments.configs import common

    assert set(common.base_config()) <= set(FIELDS)


@pytest.mark.parametrize("name", RUN_CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_shipped_config_validates(name, arg):
    config = support.load_config(CONFIG_DIR / name, arg)
    validate_config(config, csr_setting(config))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.lerning_rate=0.1"], "did you mean 'learning_rate'?"),
        (["--config=no_such_config.py"], "cannot load the config file"),
        (["--config.model_overrides.widths=(8, 16)"], "must be 3 positive integers"),
    ],
    ids=["misspelt_field", "missing_config_file", "widths_of_wrong_length"],
)
def test_cli_reports_config_mistakes_in_a_line_with_exit_code_2(root, tmp_path, args, message):
    workdir = tmp_path / "run"
    proc = support.run_cli(
        args + [f"--workdir={workdir}"], support.subprocess_env(root), timeout=180
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    assert not workdir.exists()
