"""`train_and_evaluate(config, workdir)`: the training loop.

Builds everything from the config (data, model, optimizer, mesh), resumes from the workdir's
newest verified checkpoint, trains with periodic logging/eval/checkpoints, and writes
summary.json. The order is deliberate: the whole config is validated (validate.py), the dataset
found and the model built abstractly before the workdir is touched, so a bad command fails in
seconds and never changes an existing run; then the workdir is locked (one run per workdir) and
only then written.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import tqdm
from etils import epath
from jax.sharding import Mesh

from csr_jax import data as data_lib
from csr_jax import models as models_lib
from csr_jax.policy import PolicyError
from csr_jax.train import optim
from csr_jax.train.checkpoint import IDENTITY_FIELDS, Checkpointer, check_compatible
from csr_jax.train.errors import ConfigError, NonFiniteLossError
from csr_jax.train.evaluation import evaluate
from csr_jax.train.mesh import check_batch_size, global_batch, make_data_mesh, replicated_sharding
from csr_jax.train.metrics import TrainMetrics, create_writer, repair_metrics
from csr_jax.train.preemption import PreemptionWatcher
from csr_jax.train.run_config import compute_dtype, config_record, csr_setting, model_overrides
from csr_jax.train.state import count_params, create_train_state
from csr_jax.train.steps import make_eval_step, make_train_step
from csr_jax.train.summary import (
    environment,
    format_table,
    keep_training_figures,
    read_summary,
    write_summary,
)
from csr_jax.train.validate import validate_config
from csr_jax.train.workdir import WorkdirLock, read_config, record_config, workdir_errors


def _eval_coverage(eval_result: dict[str, float], num_eval: int) -> str:
    """'(360 examples)', or '(16 of 10,000 examples, capped by eval_max_batches)' for a smoke run,
    so a smoke run's accuracy is not read as the model's."""
    n = int(eval_result["num_examples"])
    if n < num_eval:
        return f"({n:,} of {num_eval:,} examples, capped by eval_max_batches)"
    return f"({n:,} examples)"


def _every(step: int, every: int | None) -> bool:
    return bool(every) and every > 0 and step % every == 0


def _nonfinite_error(bad: dict[str, float], ckpt: Checkpointer, workdir: str) -> NonFiniteLossError:
    """The message for the first non-finite step `bad` (its metrics, see TrainMetrics)."""
    step, lr = int(bad["step"]), bad.get("learning_rate", float("nan"))
    loss_ok = all(jnp.isfinite(bad.get(k, 0.0)) for k in ("loss", "grad_norm"))
    what = (
        "the updated state (params, BatchNorm statistics or optimizer state)"
        if loss_ok and bad.get("nonfinite_state")
        else "the loss or gradients"
    )
    last = ckpt.latest_step()
    kept = (
        f"The last good checkpoint (step {last}) in {workdir} is kept; rerunning resumes from it."
        if last is not None
        else "No checkpoint had been saved yet."
    )
    return NonFiniteLossError(
        f"Training diverged: {what} became NaN/Inf at step {step} (learning rate {lr:.4g}); "
        f"nothing non-finite was saved. {kept} Try a lower --config.learning_rate, a longer "
        "--config.warmup_epochs, gradient clipping (--config.grad_clip_norm=1.0) or "
        "--config.dtype=float32."
    )


def _create_model(
    config: ml_collections.ConfigDict, info: Any, csr: Any, dtype: Any
) -> tuple[nn.Module, Any]:
    """The model and its abstract variables, from the one abstract trace before compiling (it
    also checks the CSR policy); a policy that does not fit is reported as a config error."""
    try:
        model = models_lib.create(
            config.model,
            num_classes=info.num_classes,
            csr=csr,
            dtype=dtype,
            check=False,
            **model_overrides(config),
        )
        return model, models_lib.abstract_init(model, tuple(info.image_shape), name=config.model)
    except PolicyError as e:
        raise ConfigError(f"config.csr does not fit {config.model}: {e}") from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary.

    On SIGTERM the current step finishes, a checkpoint is saved and the returned dict has
    `preempted=True` (no summary.json is written: the run is not over).
    """
    wall_start = time.time()
    csr = csr_setting(config)
    validate_config(config, csr)
    dtype = compute_dtype(config)
    data_dir, image_size = config.get("data_dir"), config.get("image_size")

    # 1. Validate everything cheap before compiling or writing anything.
    info = data_lib.get_info(
        config.dataset,
        data_dir=data_dir,
        image_size=image_size,
        mock_data=bool(config.get("mock_data", False)),
    )
    mesh = make_data_mesh()
    batch_size = int(config.batch_size)
    eval_batch_size = int(config.get("eval_batch_size") or batch_size)
    check_batch_size(batch_size, mesh, "batch_size")
    check_batch_size(eval_batch_size, mesh, "eval_batch_size")
    steps_per_epoch = max(1, info.num_train // batch_size)
    num_steps = optim.total_steps(config, steps_per_epoch)
    model, abstract_variables = _create_model(config, info, csr, dtype)
    record = config_record(config, info)

    # 2. The workdir: created, locked (a second run stops here, having written nothing), used.
    with workdir_errors(workdir):
        saved = read_config(workdir) if epath.Path(workdir).exists() else None
        if saved is not None:  # A different experiment is refused before the lock file is written.
            check_compatible(saved, record, workdir)
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        with WorkdirLock(workdir):
            ckpt = Checkpointer(workdir, keep=int(config.keep_checkpoints))
            try:
                return _train(
                    config,
                    workdir,
                    ckpt,
                    info=info,
                    mesh=mesh,
                    model=model,
                    abstract_variables=abstract_variables,
                    record=record,
                    batch_size=batch_size,
                    eval_batch_size=eval_batch_size,
                    steps_per_epoch=steps_per_epoch,
                    num_steps=num_steps,
                    wall_start=wall_start,
                )
            finally:
                ckpt.close()  # Waits for asynchronous saves: never exit with a half-written checkpoint.


def _train(
    config: ml_collections.ConfigDict,
    workdir: str,
    ckpt: Checkpointer,
    *,
    info: Any,
    mesh: Mesh,
    model: nn.Module,
    abstract_variables: Any,
    record: dict[str, Any],
    batch_size: int,
    eval_batch_size: int,
    steps_per_epoch: int,
    num_steps: int,
    wall_start: float,
) -> dict[str, Any]:
    """Everything after validation: resume or start, train, evaluate, summarise."""
    csr = record["csr"]
    data_dir, image_size = config.get("data_dir"), config.get("image_size")
    mock_data = bool(config.get("mock_data", False))
    saved = ckpt.saved_config()
    if saved is not None:
        check_compatible(saved, record, workdir)

    # 2. Schedule, optimizer, state.
    schedule = optim.make_schedule(config, steps_per_epoch, num_steps)
    input_shape = tuple(info.image_shape)
    tx = optim.make_optimizer(config, schedule, abstract_variables["params"])
    init_rng, dropout_seed = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    state = create_train_state(model, tx, init_rng, input_shape, mesh, abstract_variables)
    num_params = count_params(state.params)
    # A global (replicated) array, as jit inputs must be in a multi-process job.
    dropout_rng = jax.jit(lambda: dropout_seed, out_shardings=replicated_sharding(mesh))()

    train_iter = data_lib.make_train_iterator(
        config.dataset,
        global_batch_size=batch_size,
        seed=int(config.seed),
        data_dir=data_dir,
        image_size=image_size,
        mock_data=mock_data,
    )
    # The newest checkpoint that verifies (newer damaged ones are moved aside, with a warning).
    resumed_from, state, data_state = ckpt.restore_latest(like=state)
    record_config(workdir, record, saved, resumed_from, IDENTITY_FIELDS)
    repair_metrics(workdir, resumed_from)
    if resumed_from is not None:
        if data_state is not None:
            train_iter.set_state(data_state)
        else:
            logging.warning(
                "The checkpoint was written by a different number of processes; the data "
                "order restarts from the beginning of the seed %d stream.",
                config.seed,
            )
        if jax.process_index() == 0:
            print(f"Resuming from the checkpoint at step {resumed_from} in {workdir}", flush=True)

    train_step = make_train_step(
        mesh,
        state,
        num_classes=info.num_classes,
        learning_rate_fn=schedule,
        label_smoothing=float(config.get("label_smoothing", 0.0) or 0.0),
    )
    eval_step = make_eval_step(mesh, state, num_classes=info.num_classes)

    # 3. Train.
    is_main = jax.process_index() == 0
    writer = create_writer(workdir, tensorboard=bool(config.get("tensorboard", True)))
    if resumed_from is None:
        writer.write_hparams({k: v for k, v in record.items() if not isinstance(v, dict)})
    watcher = PreemptionWatcher()
    pending = TrainMetrics()
    # The config's own values: base_config holds the one set of defaults.
    log_every = int(config.log_every_steps or 0)
    eval_every = int(config.eval_every_steps or 0)
    ckpt_every = int(config.checkpoint_every_steps or 0)
    step = int(jax.device_get(state.step))
    start_step = step
    eval_result: dict[str, float] | None = None
    last_train: dict[str, float] = {}
    train_time, train_images, compile_time = 0.0, 0, None
    segment_start, segment_steps = time.time(), 0
    preempted = False
    bar = tqdm.tqdm(
        total=num_steps,
        initial=step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not is_main,
        mininterval=1.0,
    )
    try:
        while step < num_steps:
            batch = global_batch(next(train_iter), mesh)
            state, metrics = train_step(state, batch, dropout_rng)
            step += 1
            bar.update(1)
            pending.add(step, metrics)
            if compile_time is None:
                jax.block_until_ready(metrics)
                compile_time = time.time() - segment_start
                segment_start, segment_steps = time.time(), 0
            else:
                segment_steps += 1

            stop = watcher.should_stop(step)
            last = step == num_steps
            do_eval = last or _every(step, eval_every)
            do_save = last or stop or _every(step, ckpt_every)
            if do_eval or do_save or _every(step, log_every):
                summary, first_bad = pending.summarize()  # Syncs with the device.
                if first_bad is not None:
                    raise _nonfinite_error(first_bad, ckpt, workdir)
                now = time.time()
                if segment_steps:
                    train_time += now - segment_start
                    train_images += segment_steps * batch_size
                    summary["images_per_sec"] = (
                        segment_steps * batch_size / max(now - segment_start, 1e-9)
                    )
                last_train = summary
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
                bar.set_postfix(loss=f"{summary['loss']:.4f}", refresh=False)
                if do_eval:
                    eval_result = evaluate(eval_step, state, config, mesh, eval_batch_size)
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_result.items()})
                    if is_main:
                        bar.write(
                            f"step {step}: eval accuracy {eval_result['accuracy']:.4f}, "
                            f"loss {eval_result['loss']:.4f} {_eval_coverage(eval_result, info.num_eval)}"
                        )
                if do_save:
                    ckpt.save(step, state, train_iter.get_state(), record)
                segment_start, segment_steps = time.time(), 0
            if stop and not last:
                preempted = True
                break
        if not preempted and eval_result is None:  # Resumed a finished run: evaluate it again.
            eval_result = evaluate(eval_step, state, config, mesh, eval_batch_size)
            writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_result.items()})
    finally:
        bar.close()
        ckpt.wait()
        writer.close()
        watcher.close()

    if preempted:
        msg = (
            f"Preempted (SIGTERM): saved a checkpoint at step {step}/{num_steps} in {workdir}. "
            f"Rerun the same command with --workdir={workdir} to resume."
        )
        logging.warning(msg)
        return {
            "preempted": True,
            "step": step,
            "num_train_steps": num_steps,
            "workdir": workdir,
            "message": msg,
        }

    result: dict[str, Any] = {
        "model": config.model,
        "csr": csr,
        "dataset": config.dataset,
        "mock_data": mock_data,  # True: the eval numbers are on tfds's random examples.
        "num_classes": int(info.num_classes),
        "image_shape": list(input_shape),
        "num_params": num_params,
        "step": step,
        "num_train_steps": num_steps,
        "steps_this_run": step - start_step,
        "resumed_from_step": resumed_from,
        "batch_size": batch_size,
        "dtype": str(config.get("dtype") or "float32"),
        "eval_accuracy": eval_result["accuracy"],
        "eval_loss": eval_result["loss"],
        "eval_examples": int(eval_result["num_examples"]),
        "train_loss": last_train.get("loss"),
        "images_per_sec": train_images / train_time if train_time > 0 else None,
        "compile_time_s": compile_time,
        "wall_time_s": time.time() - wall_start,
        "workdir": str(workdir),
        "preempted": False,
    }
    if "top5_accuracy" in eval_result:
        result["eval_top5_accuracy"] = eval_result["top5_accuracy"]
    result.update(environment())
    if result["steps_this_run"] == 0:  # A finished run, re-evaluated: keep its training figures.
        result = keep_training_figures(result, read_summary(workdir))
    write_summary(workdir, result)
    if is_main:
        print(format_table(result), flush=True)
    return result
