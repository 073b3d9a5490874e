"""The train state: step, params, BatchNorm statistics and optimizer state in one pytree.

`flax.training.train_state.TrainState` plus `batch_stats`, so that a checkpoint and the jitted
step both see everything that changes during training as a single object.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from csr_jax.accounting import count_params  # noqa: F401  (one parameter count, re-exported)
from csr_jax.train.mesh import replicated_sharding

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class TrainState(train_state.TrainState):
    """`TrainState` with the model's non-trainable `batch_stats` collection."""

    batch_stats: Any = None


def state_from_variables(
    model: nn.Module, tx: optax.GradientTransformation, variables: Any
) -> TrainState:
    """The train state of ``model``'s ``variables`` (arrays, or ``jax.ShapeDtypeStruct`` leaves
    under ``jax.eval_shape``): step 0, the optimizer's initial state."""
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shape: tuple[int, ...],
    mesh: Mesh,
    abstract_variables: Any = None,
) -> TrainState:
    """Initialises the model and optimizer directly into replicated device buffers.

    Initialisation runs under `jit` with a replicated output sharding: every process computes the
    same values from the same `rng` (no broadcast needed) and large models never materialise on
    the host first. Params are float32 whatever the compute dtype. `abstract_variables`, the
    model's `jax.eval_shape` init when the caller has it (`csr_jax.models.abstract_init`), spares a
    second abstract trace of the model for the output shardings.
    """

    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        dummy = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
        variables = model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)
        return state_from_variables(model, tx, variables)

    if abstract_variables is None:
        abstract = jax.eval_shape(init, rng)
    else:  # The model was traced already (csr_jax.models.abstract_init): trace only the optimizer.
        abstract = jax.eval_shape(lambda v: state_from_variables(model, tx, v), abstract_variables)
    shardings = jax.tree.map(lambda _: replicated_sharding(mesh), abstract)
    # Initialisation runs once and is mostly threefry random bits, one block per parameter:
    # XLA:CPU's optimising backend spends 4x longer compiling it than running it unoptimised
    # (16 s vs 4 s for ResNet-56), so on CPU it is compiled without backend optimisation.
    options = _FAST_COMPILE if mesh.devices.flat[0].platform == "cpu" else None
    return jax.jit(init, out_shardings=shardings, compiler_options=options)(rng)


def abstract_train_state(state: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of `state`: the restore target for a checkpoint."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
