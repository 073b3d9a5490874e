"""The jitted train and eval steps.

One `jax.jit` per step over the 'data' mesh: inputs/outputs carry explicit shardings (batch split
over 'data', state replicated), and the state buffers are donated so the update happens in place
instead of doubling device memory.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from csr_jax.train.mesh import batch_sharding, replicated_sharding
from csr_jax.train.state import TrainState

Metrics = dict[str, jax.Array]


def cross_entropy(
    logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k largest logits."""
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def _all_finite(tree) -> jax.Array:
    """True iff every floating-point leaf of `tree` is free of NaN/Inf (a replicated scalar)."""
    flags = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def make_train_step(
    mesh: Mesh,
    state: TrainState,
    *,
    num_classes: int,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    label_smoothing: float = 0.0,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Returns `step(state, batch, rng) -> (new_state, metrics)`, compiled once.

    `metrics` are replicated scalars: `loss`, `accuracy`, `learning_rate`, `grad_norm`,
    `nonfinite` (1.0 if the loss, the gradients or the *new* state are NaN/Inf) and
    `nonfinite_state` (1.0 if the new params, batch statistics or optimizer state are), which the
    loop uses to stop before a broken state is ever saved. A finite loss does not imply a finite
    new state: a huge update can overflow the params or a BatchNorm variance. Dropout draws `fold_in(rng, step)`, so a resumed run draws the
    same masks as an uninterrupted one.
    """

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, updates = state.apply_fn(
                variables,
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": step_rng},
            )
            loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing).mean()
            return loss, (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        new_state = state.apply_gradients(
            grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats)
        )
        accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
        state_finite = _all_finite((new_state.params, new_state.batch_stats, new_state.opt_state))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & state_finite
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
            "grad_norm": grad_norm,
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            "nonfinite_state": 1.0 - state_finite.astype(jnp.float32),
        }
        return new_state, metrics

    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    data = batch_sharding(mesh)
    repl = replicated_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding, data, repl),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )


def make_eval_step(
    mesh: Mesh,
    state: TrainState,
    *,
    num_classes: int,
) -> Callable[[TrainState, dict[str, jax.Array]], Metrics]:
    """Returns `eval_step(state, batch) -> sums` over the *global* batch.

    Sums (not means) of loss, correct predictions (top-1, and top-5 for >= 100 classes) and the
    mask, so that padded rows count for nothing and the host adds batches up exactly: accuracy is
    `sum(correct) / sum(mask)` over the whole eval set, every example once.
    """
    top5 = num_classes >= 100

    def eval_step(state: TrainState, batch: dict[str, jax.Array]):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits = state.apply_fn(variables, batch["image"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"], num_classes)
        sums = {
            "loss": jnp.sum(loss * mask),
            "correct": jnp.sum(_topk_correct(logits, batch["label"], 1) * mask),
            "count": jnp.sum(mask),
        }
        if top5:
            sums["correct_top5"] = jnp.sum(_topk_correct(logits, batch["label"], 5) * mask)
        return sums

    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        eval_step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=replicated_sharding(mesh),
    )
