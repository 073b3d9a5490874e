"""Reading an experiment config: the CSR setting, compute dtype, model overrides, saved record.

The config is an `ml_collections.ConfigDict` (see experiments/configs/common.py for every field);
these helpers turn its user-facing spellings into what the model and the checkpoint need.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from csr_jax.policy import PolicyError, parse_csr
from csr_jax.train.errors import ConfigError

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def csr_setting(config: ml_collections.ConfigDict) -> str | dict[str, Any] | None:
    """`config.csr` as `csr_jax.models.create` takes it: None for the ordinary network ('none',
    '', None), a preset name, or a full policy's dict (given as JSON text or a .json file path)."""
    csr = config.get("csr")
    if hasattr(csr, "to_dict"):  # A CSRPolicy in its dict form.
        return csr.to_dict()
    if csr is None or (isinstance(csr, str) and csr.strip().lower() in ("", "none", "off")):
        return None
    try:
        return parse_csr(csr)
    except PolicyError as e:
        raise ConfigError(f"config.csr: {e}") from e


def compute_dtype(config: ml_collections.ConfigDict):
    """The model's compute dtype (params stay float32)."""
    name = config.get("dtype") or "float32"
    if name not in _DTYPES:
        raise ConfigError(f"Unknown config.dtype {name!r}; choose one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def config_record(config: ml_collections.ConfigDict, info: Any) -> dict[str, Any]:
    """The config as saved with checkpoints, plus what was derived from the dataset."""
    record = config.to_dict()
    record["csr"] = csr_setting(config)
    record["num_classes"] = int(info.num_classes)
    record["image_shape"] = [int(d) for d in info.image_shape]
    return record


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.model_overrides` as keyword arguments for `csr_jax.models.create`."""
    overrides = config.get("model_overrides")
    if overrides is None:
        return {}
    return dict(overrides.to_dict() if hasattr(overrides, "to_dict") else overrides)
