"""`validate_config(config)`: every field checked before the workdir is touched.

A config mistake must cost seconds and leave the workdir as it was: a typo in `optimizer` that
is only noticed after config.json is written would make the corrected command look like "a
different experiment". So every field has a type and a range here, names (dataset, model, CSR
preset, optimizer, schedule, dtype) are checked against what exists, and `model_overrides` are
checked against the fields of the model they override. Problems are raised together as one
`ConfigError`, one line each, with the nearest valid choice.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from typing import Any, Callable, Mapping

import ml_collections

from csr_jax.train.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DTYPES = ("float32", "bfloat16", "float16")


def _nearest(value: Any, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(choices)}."


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


# A check returns None when the value is fine, else what it must be.
Check = Callable[[Any], "str | None"]


def _int(minimum: int, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if _is_int(v) and v >= minimum:
            return None
        return f"an integer >= {minimum}" + (" (or None)" if optional else "")

    return check


def _real(
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
    optional: bool = False,
) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if _is_real(v):
            x = float(v)
            above = x > low if low_open else x >= low
            below = high is None or (x < high if high_open else x <= high)
            if above and below:
                return None
        interval = (
            ("(" if low_open else "[")
            + f"{low:g}, "
            + (f"{high:g}" + (")" if high_open else "]") if high is not None else "inf)")
        )
        return f"a finite number in {interval}" + (" (or None)" if optional else "")

    return check


def _bool(v):
    return None if isinstance(v, bool) else "True or False"


def _str(optional: bool = False) -> Check:
    def check(v):
        if (v is None and optional) or isinstance(v, str):
            return None
        return "a string" + (" (or None)" if optional else "")

    return check


def _regex(v):
    if not isinstance(v, str):
        return "a regular expression (a string)"
    try:
        re.compile(v)
    except re.error as e:
        return f"a valid regular expression ({e})"
    return None


def _anything(v):
    del v
    return None


# Field -> (check, example of a valid value). Names (dataset, model, ...) are checked below.
FIELDS: dict[str, tuple[Check, str]] = {
    "seed": (_int(0), "0"),
    "dataset": (_str(), "digits"),
    "data_dir": (_str(optional=True), "/data"),
    "image_size": (_int(1, optional=True), "32"),
    "mock_data": (_bool, "True"),
    "model": (_str(), "resnet20"),
    "csr": (_anything, "t2"),
    "model_overrides": (_anything, "'{}'"),
    "dtype": (_str(), "float32"),
    "batch_size": (_int(1), "128"),
    "eval_batch_size": (_int(1, optional=True), "128"),
    "num_epochs": (_real(0, low_open=True, optional=True), "10"),
    "num_train_steps": (_int(1, optional=True), "1000"),
    "optimizer": (_str(), "sgd"),
    "learning_rate": (_real(0, low_open=True), "0.1"),
    "momentum": (_real(0, 1), "0.9"),
    "nesterov": (_bool, "True"),
    "weight_decay": (_real(0), "5e-4"),
    "weight_decay_min_ndim": (_int(0), "2"),
    "weight_decay_exclude": (_regex, "''"),
    "grad_clip_norm": (_real(0, low_open=True, optional=True), "1.0"),
    "label_smoothing": (_real(0, 1), "0.1"),
    "schedule": (_str(), "cosine"),
    "warmup_epochs": (_real(0, optional=True), "1.0"),
    "step_decay_epochs": (_real(0, low_open=True), "30"),
    "step_decay_factor": (_real(0, 1, low_open=True, high_open=False), "0.5"),
    "log_every_steps": (_int(0, optional=True), "100"),
    "eval_every_steps": (_int(0, optional=True), "1000"),
    "checkpoint_every_steps": (_int(0, optional=True), "1000"),
    "keep_checkpoints": (_int(1), "3"),
    "eval_max_batches": (_int(1, optional=True), "10"),
    "tensorboard": (_bool, "True"),
}


def _as_dict(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _field_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in config:
        if key not in FIELDS:
            problems.append(f"Unknown config field {key!r}: {_nearest(key, FIELDS)}")
            continue
        check, example = FIELDS[key]
        wanted = check(config[key])
        if wanted:
            problems.append(
                f"config.{key} must be {wanted}, got {config[key]!r} "
                f"(e.g. --config.{key}={example})."
            )
    return problems


def _name_problems(config: Mapping[str, Any]) -> list[str]:
    from csr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    from csr_jax import models  # pylint: disable=g-import-not-at-top

    problems = []
    checks = (
        ("dataset", data_lib.list_datasets()),
        ("model", models.list_models()),
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("dtype", DTYPES),
    )
    for key, choices in checks:
        value = config.get(key)
        if isinstance(value, str) and value not in choices:
            problems.append(f"Unknown config.{key} {value!r}: {_nearest(value, choices)}")
    if config.get("num_train_steps") is None and config.get("num_epochs") is None:
        problems.append(
            "Set the run length: --config.num_epochs (e.g. 10) or "
            "--config.num_train_steps (e.g. 1000)."
        )
    return problems


def _override_problem(model: str, key: str, value: Any, field: dataclasses.Field) -> str | None:
    """What is wrong with `value` for the model field `field`, judged by its default and type."""
    default = field.default
    where = f"config.model_overrides.{key} for {model}"
    if isinstance(default, tuple) and default and all(_is_int(d) for d in default):
        ok = (
            isinstance(value, (tuple, list))
            and len(value) == len(default)
            and all(_is_int(v) and v >= 1 for v in value)
        )
        if not ok:
            return (
                f"{where} must be {len(default)} positive integers like its default {default}, "
                f"got {value!r}."
            )
        return None
    if isinstance(default, tuple) and default and all(isinstance(d, tuple) for d in default):
        width = len(default[0])
        ok = (
            isinstance(value, (tuple, list))
            and value
            and all(
                isinstance(r, (tuple, list)) and len(r) == width and all(_is_int(x) for x in r)
                for r in value
            )
        )
        if not ok:
            return f"{where} must be rows of {width} integers like its default, got {value!r}."
        return None
    if value is None and (default is None or "None" in str(field.type)):
        return None
    if _is_int(default) and not (_is_int(value) and value >= 1):
        return f"{where} must be an integer >= 1 like its default {default}, got {value!r}."
    is_rate = "rate" in key
    if isinstance(default, float) or (default is None and "float" in str(field.type)):
        ok = _is_real(value) and (0 <= float(value) < 1 if is_rate else float(value) > 0)
        if not ok:
            rng = "in [0, 1)" if is_rate else "> 0"
            return f"{where} must be a finite number {rng}, got {value!r}."
    return None


def _model_problems(config: Mapping[str, Any]) -> list[str]:
    """Overrides name fields of the model and have values of the right shape; CSR fits it."""
    from csr_jax import models  # pylint: disable=g-import-not-at-top
    from csr_jax.models import registry  # pylint: disable=g-import-not-at-top

    name = config.get("model")
    if name not in models.list_models():
        return []
    overrides = _as_dict(config.get("model_overrides")) or {}
    if not isinstance(overrides, Mapping):
        return [f"config.model_overrides must be a mapping of {name} fields, got {overrides!r}."]
    spec = registry._MODELS[name]  # pylint: disable=protected-access
    fields = {
        f.name: f
        for f in dataclasses.fields(spec.module)
        if f.name not in ("parent", "name", "conv", "dtype", "num_classes")
        and f.name not in spec.fixed
    }
    problems = []
    for key, value in overrides.items():
        if key == "unroll":
            if not (_is_int(value) and value >= 1):
                problems.append(
                    f"config.model_overrides.unroll must be an integer >= 1, got {value!r}."
                )
        elif key in spec.fixed:
            problems.append(
                f"config.model_overrides.{key} defines {name} itself ({key}="
                f"{spec.fixed[key]!r}); set --config.model to the registered model you "
                f"want instead ({models.list_models()})."
            )
        elif key not in fields:
            problems.append(
                f"{name} has no field {key!r} to override: "
                f"{_nearest(key, sorted(fields) + ['unroll'])}"
            )
        else:
            problem = _override_problem(name, key, value, fields[key])
            if problem:
                problems.append(problem)
    return problems


def _csr_problems(config: Mapping[str, Any], csr: Any) -> list[str]:
    """The CSR setting builds a policy that fits the model (a preset of it, or a valid policy)."""
    from csr_jax import models  # pylint: disable=g-import-not-at-top
    from csr_jax.policy import PolicyError  # pylint: disable=g-import-not-at-top

    name = config.get("model")
    if name not in models.list_models():
        return []
    try:
        models.get_policy(name, csr)
    except PolicyError as e:
        return [f"config.csr: {e}"]
    except TypeError as e:
        return [f"config.csr: {e} (e.g. --config.csr=t2 or --config.csr=none)."]
    return []


def validate_config(config: ml_collections.ConfigDict, csr: Any = None) -> None:
    """Raises ConfigError listing every problem of `config`, one line each; returns None if fine.

    `csr` is the config's CSR setting as `run_config.csr_setting` reads it (None: the ordinary
    network). Checks names and shapes only: nothing is compiled and nothing is written.
    """
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    problems = _field_problems(values)
    problems += _name_problems(values)
    problems += _model_problems(values)
    if not problems:
        problems += _csr_problems(values, csr)
    if problems:
        raise ConfigError("\n".join(problems))
