"""Evaluation over a whole eval split, every example counted exactly once."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from csr_jax import data as data_lib
from csr_jax.train.mesh import global_batch
from csr_jax.train.state import TrainState


def evaluate(
    eval_step: Callable[..., dict[str, jax.Array]],
    state: TrainState,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    eval_batch_size: int,
) -> dict[str, float]:
    """Accuracy and loss over the whole eval split, every example counted exactly once.

    `config.eval_max_batches` (smoke runs only) stops after that many batches; every process
    gets the same number of batches, so all stop together.
    """
    totals = None
    max_batches = config.get("eval_max_batches")
    batches = data_lib.make_eval_iterator(
        config.dataset,
        global_batch_size=eval_batch_size,
        data_dir=config.get("data_dir"),
        image_size=config.get("image_size"),
        mock_data=bool(config.get("mock_data", False)),
    )
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        sums = eval_step(state, global_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError(f"The eval split of {config.dataset!r} yielded no batches.")
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    count = totals["count"]
    if count <= 0:
        raise ValueError(f"The eval split of {config.dataset!r} has no examples (all masked).")
    result = {
        "accuracy": totals["correct"] / count,
        "loss": totals["loss"] / count,
        "num_examples": count,
    }
    if "correct_top5" in totals:
        result["top5_accuracy"] = totals["correct_top5"] / count
    return result
