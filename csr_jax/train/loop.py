"""`train_and_evaluate(config, workdir)`: the training loop.

Builds everything from the config (data, model, optimizer, mesh), resumes from the workdir's
latest checkpoint, trains with periodic logging/eval/checkpoints, and writes summary.json.
The order of the checks is deliberate: cheap validation (dataset, model, batch size, workdir
compatibility) happens before anything is compiled or written, so a bad command fails in seconds
and never touches an existing run.
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
from csr_jax.train import optim
from csr_jax.train.checkpoint import Checkpointer, check_compatible
from csr_jax.train.errors import NonFiniteLossError
from csr_jax.train.evaluation import evaluate
from csr_jax.train.mesh import check_batch_size, global_batch, make_data_mesh, replicated_sharding
from csr_jax.train.metrics import TrainMetrics, create_writer
from csr_jax.train.preemption import PreemptionWatcher
from csr_jax.train.run_config import compute_dtype, config_record, csr_setting, model_overrides
from csr_jax.train.state import count_params, create_train_state
from csr_jax.train.steps import make_eval_step, make_train_step
from csr_jax.train.summary import environment, format_table, write_summary


def _every(step: int, every: int | None) -> bool:
  return bool(every) and every > 0 and step % every == 0


def _nonfinite_error(step: int, lr: float, ckpt: Checkpointer, workdir: str) -> NonFiniteLossError:
  last = ckpt.latest_step()
  kept = (f'The last good checkpoint (step {last}) in {workdir} is kept; rerunning resumes '
          'from it.' if last is not None else 'No checkpoint had been saved yet.')
  return NonFiniteLossError(
      f'Training diverged: the loss or gradients became NaN/Inf at step {step} (learning rate '
      f'{lr:.4g}). {kept} Try a lower --config.learning_rate, a longer '
      '--config.warmup_epochs, gradient clipping (--config.grad_clip_norm=1.0) or '
      '--config.dtype=float32.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary.

  On SIGTERM the current step finishes, a checkpoint is saved and the returned dict has
  `preempted=True` (no summary.json is written: the run is not over).
  """
  wall_start = time.time()
  csr = csr_setting(config)
  dtype = compute_dtype(config)
  data_dir, image_size = config.get('data_dir'), config.get('image_size')

  # 1. Validate everything cheap before compiling or writing anything.
  info = data_lib.get_info(config.dataset, data_dir=data_dir, image_size=image_size,
                           mock_data=bool(config.get('mock_data', False)))
  mesh = make_data_mesh()
  batch_size = int(config.batch_size)
  eval_batch_size = int(config.get('eval_batch_size') or batch_size)
  check_batch_size(batch_size, mesh, 'batch_size')
  check_batch_size(eval_batch_size, mesh, 'eval_batch_size')
  steps_per_epoch = max(1, info.num_train // batch_size)
  num_steps = optim.total_steps(config, steps_per_epoch)
  model = models_lib.create(config.model, num_classes=info.num_classes, csr=csr, dtype=dtype,
                            **model_overrides(config))
  record = config_record(config, info)

  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(workdir, keep=int(config.get('keep_checkpoints', 3) or 3))
  try:
    return _train(config, workdir, ckpt, info=info, mesh=mesh, model=model, record=record,
                  batch_size=batch_size, eval_batch_size=eval_batch_size,
                  steps_per_epoch=steps_per_epoch, num_steps=num_steps, wall_start=wall_start)
  finally:
    ckpt.close()  # Waits for asynchronous saves: never exit with a half-written checkpoint.


def _train(config: ml_collections.ConfigDict, workdir: str, ckpt: Checkpointer, *, info: Any,
           mesh: Mesh, model: nn.Module, record: dict[str, Any], batch_size: int,
           eval_batch_size: int, steps_per_epoch: int, num_steps: int,
           wall_start: float) -> dict[str, Any]:
  """Everything after validation: resume or start, train, evaluate, summarise."""
  csr = record['csr']
  data_dir, image_size = config.get('data_dir'), config.get('image_size')
  mock_data = bool(config.get('mock_data', False))
  saved = ckpt.saved_config()
  if saved is not None:
    check_compatible(saved, record, workdir)
  else:
    ckpt.write_config(record)

  # 2. Schedule, optimizer, state.
  schedule = optim.make_schedule(config, steps_per_epoch, num_steps)
  input_shape = tuple(info.image_shape)
  abstract_params = jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
                         jnp.zeros((1,) + input_shape, jnp.float32), train=False))['params']
  tx = optim.make_optimizer(config, schedule, abstract_params)
  init_rng, dropout_seed = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  state = create_train_state(model, tx, init_rng, input_shape, mesh)
  num_params = count_params(state.params)
  # A global (replicated) array, as jit inputs must be in a multi-process job.
  dropout_rng = jax.jit(lambda: dropout_seed, out_shardings=replicated_sharding(mesh))()

  train_iter = data_lib.make_train_iterator(config.dataset, global_batch_size=batch_size,
                                            seed=int(config.seed), data_dir=data_dir,
                                            image_size=image_size, mock_data=mock_data)
  resumed_from = ckpt.latest_step()
  if resumed_from is not None:
    state, data_state = ckpt.restore(resumed_from, like=state)
    if data_state is not None:
      train_iter.set_state(data_state)
    else:
      logging.warning('The checkpoint was written by a different number of processes; the data '
                      'order restarts from the beginning of the seed %d stream.', config.seed)
    if jax.process_index() == 0:
      print(f'Resuming from the checkpoint at step {resumed_from} in {workdir}', flush=True)

  train_step = make_train_step(mesh, state, num_classes=info.num_classes,
                               learning_rate_fn=schedule,
                               label_smoothing=float(config.get('label_smoothing', 0.0) or 0.0))
  eval_step = make_eval_step(mesh, state, num_classes=info.num_classes)

  # 3. Train.
  is_main = jax.process_index() == 0
  writer = create_writer(workdir, tensorboard=bool(config.get('tensorboard', True)))
  if resumed_from is None:
    writer.write_hparams({k: v for k, v in record.items() if not isinstance(v, dict)})
  watcher = PreemptionWatcher()
  pending = TrainMetrics()
  log_every = int(config.get('log_every_steps', 50) or 0)
  eval_every = int(config.get('eval_every_steps', 0) or 0)
  ckpt_every = int(config.get('checkpoint_every_steps', 0) or 0)
  step = int(jax.device_get(state.step))
  start_step = step
  eval_result: dict[str, float] | None = None
  last_train: dict[str, float] = {}
  train_time, train_images, compile_time = 0.0, 0, None
  segment_start, segment_steps = time.time(), 0
  preempted = False
  bar = tqdm.tqdm(total=num_steps, initial=step, desc='train', unit='step', dynamic_ncols=True,
                  disable=not is_main, mininterval=1.0)
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
          raise _nonfinite_error(first_bad, summary.get('learning_rate', float('nan')), ckpt,
                                 workdir)
        now = time.time()
        if segment_steps:
          train_time += now - segment_start
          train_images += segment_steps * batch_size
          summary['images_per_sec'] = segment_steps * batch_size / max(now - segment_start, 1e-9)
        last_train = summary
        writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})
        bar.set_postfix(loss=f"{summary['loss']:.4f}", refresh=False)
        if do_eval:
          eval_result = evaluate(eval_step, state, config, mesh, eval_batch_size)
          writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_result.items()})
          if is_main:
            bar.write(f"step {step}: eval accuracy {eval_result['accuracy']:.4f}, "
                      f"loss {eval_result['loss']:.4f}")
        if do_save:
          ckpt.save(step, state, train_iter.get_state(), record)
        segment_start, segment_steps = time.time(), 0
      if stop and not last:
        preempted = True
        break
    if not preempted and eval_result is None:  # Resumed a finished run: evaluate it again.
      eval_result = evaluate(eval_step, state, config, mesh, eval_batch_size)
      writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_result.items()})
  finally:
    bar.close()
    ckpt.wait()
    writer.close()
    watcher.close()

  if preempted:
    msg = (f'Preempted (SIGTERM): saved a checkpoint at step {step}/{num_steps} in {workdir}. '
           f'Rerun the same command with --workdir={workdir} to resume.')
    logging.warning(msg)
    return {'preempted': True, 'step': step, 'num_train_steps': num_steps, 'workdir': workdir,
            'message': msg}

  result: dict[str, Any] = {
      'model': config.model,
      'csr': csr,
      'dataset': config.dataset,
      'mock_data': mock_data,  # True: the eval numbers are on tfds's random examples.
      'num_classes': int(info.num_classes),
      'image_shape': list(input_shape),
      'num_params': num_params,
      'step': step,
      'num_train_steps': num_steps,
      'steps_this_run': step - start_step,
      'resumed_from_step': resumed_from,
      'batch_size': batch_size,
      'dtype': str(config.get('dtype') or 'float32'),
      'eval_accuracy': eval_result['accuracy'],
      'eval_loss': eval_result['loss'],
      'eval_examples': int(eval_result['num_examples']),
      'train_loss': last_train.get('loss'),
      'images_per_sec': train_images / train_time if train_time > 0 else None,
      'compile_time_s': compile_time,
      'wall_time_s': time.time() - wall_start,
      'workdir': str(workdir),
      'preempted': False,
  }
  if 'top5_accuracy' in eval_result:
    result['eval_top5_accuracy'] = eval_result['top5_accuracy']
  result.update(environment())
  write_summary(workdir, result)
  if is_main:
    print(format_table(result), flush=True)
  return result
