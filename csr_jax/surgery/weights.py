"""Copying an original model's weights into its converted form."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax.core import unfreeze

from csr_jax.surgery.errors import SurgeryError
from csr_jax.surgery.report import SurgeryReport

__all__ = ["transfer_weights"]


def _get(tree: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(tree, Mapping) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _shape(value: Any) -> tuple[int, ...]:
    """Shape of an array or of a ``jax.ShapeDtypeStruct`` (abstract variables work too)."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(np.shape(value))


def transfer_weights(
    original_variables: Mapping[str, Any],
    converted_variables: Mapping[str, Any],
    report: SurgeryReport,
) -> dict[str, Any]:
    """Copies the original model's weights into the converted model's variables.

    Every variable that is not part of a converted conv (other layers, norms, BatchNorm
    statistics, unconverted convs) is copied as is. A conv converted with T = 1 gets
    ``input_kernel <- kernel`` and ``input_bias <- bias``: a T = 1 ``CSRConv`` is that conv, so a
    model converted with T = 1 everywhere (``convert(..., t1_as_csr=True)``) then gives the
    original model's outputs. Convs
    converted with T > 1 keep the values in ``converted_variables`` (their weights have no
    counterpart in an ordinary conv), so start from ``converted.init(...)`` and fine-tune.

    Returns a new nested dict; raises ``SurgeryError`` when a variable's shape or path does not
    line up (variables of another model, or of a different conversion than ``report``'s).
    """
    original = (
        unfreeze(original_variables)
        if not isinstance(original_variables, dict)
        else original_variables
    )
    result = jax.tree_util.tree_map(lambda a: a, unfreeze(converted_variables))  # fresh containers
    converted = {r.scope_path: r for r in report.converted}

    def put(keys: tuple[str, ...], value: Any, what: str) -> None:
        target = _get(result, keys[:-1])
        if not isinstance(target, dict) or keys[-1] not in target:
            raise SurgeryError(
                f"transfer_weights: the converted variables have no {'/'.join(keys)} for {what}; "
                "pass variables of the model that convert() returned with this report."
            )
        if _shape(target[keys[-1]]) != _shape(value):
            raise SurgeryError(
                f"transfer_weights: shape mismatch at {'/'.join(keys)}: original {_shape(value)}, converted "
                f"{_shape(target[keys[-1]])}; the variables come from different models or inputs."
            )
        target[keys[-1]] = value

    leaves = jax.tree_util.tree_flatten_with_path(original)[0]
    for key_path, value in leaves:
        keys = tuple(str(getattr(k, "key", k)) for k in key_path)
        collection, inner = keys[0], keys[1:]
        record = converted.get(inner[:-1]) if collection == "params" else None
        if record is None:
            put(keys, value, "the original variable")
        elif record.steps == 1:
            mapped = {"kernel": "input_kernel", "bias": "input_bias"}.get(inner[-1])
            if mapped is None:
                raise SurgeryError(
                    f"transfer_weights: unexpected variable {'/'.join(keys)} in converted conv."
                )
            put((collection, *inner[:-1], mapped), value, f"conv {record.path}")
        # Converted with T > 1: nothing to copy.
    return result
