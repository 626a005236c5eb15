"""`run(config, workdir)`: the whole training run, importable from a notebook.

data → (global, sharded) batch → jitted `train_step` (donated state) → metrics one step late →
async Orbax checkpoints every `checkpoint.every_steps`, at the end, and on SIGTERM.
A workdir that already holds a committed checkpoint resumes from it exactly (params, optimizer,
step and data-iterator position): from its newest intact step (`workdirs.restore_latest`),
after comparing its saved config with this one (`train/resume.py`).
"""

import dataclasses
import pathlib
import signal
import threading
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from llava_jax import sharding
from llava_jax.checkpoint import workdirs
from llava_jax.config import check as config_check
from llava_jax.model import splash
from llava_jax.train import metrics as metrics_lib
from llava_jax.train import resume
from llava_jax.train import step as step_lib
from llava_jax.train.state import TrainState
from llava_jax.train.state import make_factory


@dataclasses.dataclass
class Data:
  """This process's batches: `iterator` yields Batch dicts of numpy arrays (rows of this host's
  shard of the global batch) and has Grain's `get_state`/`set_state`; `num_records` is one
  epoch's size (it turns `train.epochs` into steps)."""
  iterator: Iterator[dict[str, np.ndarray]]
  num_records: int


def total_steps(config: ml_collections.ConfigDict, num_records: int) -> int:
  if config.train.steps > 0:
    return config.train.steps
  return max(1, config.train.epochs * num_records // config.train.batch_size)


def check_train_config(config: ml_collections.ConfigDict, mesh) -> None:
  """Fails early on settings that would only break later (or silently)."""
  config_check.check(config)
  if config.data.max_len > config.model.llm.max_len:
    raise ValueError(f"config.data.max_len={config.data.max_len} exceeds the decoder's "
                     f"context config.model.llm.max_len={config.model.llm.max_len} (positions "
                     "past it have no rotary embedding)")
  if config.model.attention == "splash" and not splash.tiles(config.data.max_len):
    raise ValueError(f"config.model.attention='splash' needs config.data.max_len (now "
                     f"{config.data.max_len}) to be a multiple of 128")
  # The global batch must split evenly into micro-batches, batch shards and processes.
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  need = shards * config.train.grad_accum_steps
  if config.train.batch_size % need or config.train.batch_size % jax.process_count():
    raise ValueError(
        f"config.train.batch_size={config.train.batch_size} must be a multiple of "
        f"mesh.data*mesh.fsdp ({shards}) x train.grad_accum_steps "
        f"({config.train.grad_accum_steps}) and of the process count ({jax.process_count()})")


def make_data(config: ml_collections.ConfigDict) -> Data:
  """The real input pipeline over `config.data`, validated first."""
  from llava_jax.data import pipeline  # Imported late: only the real run needs Grain workers.
  from llava_jax.data import validate
  validate.check(config.data, config.model)
  iterator = pipeline.make_train_iterator(
      config.data, config.model, global_batch_size=config.train.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  return Data(iterator=iterator, num_records=len(pipeline.make_source(config.data)))


class _Sigterm:
  """Records SIGTERM (preemption) so the loop can save and exit cleanly at a step boundary."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    # With several processes JAX's preemption service owns SIGTERM (see `_preempted`): a Python
    # handler would replace its notifier and no host would hear of the preemption.
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(config: ml_collections.ConfigDict, workdir, data: Data | None = None) -> TrainState:
  """Trains (or resumes) `config` in `workdir`; returns the final state.

  `data` replaces the pipeline over `config.data` (e.g. from a notebook or a test).
  """
  workdir = pathlib.Path(workdir).absolute()
  config_check.check(config)
  mesh = sharding.make_mesh(config.mesh)
  check_train_config(config, mesh)
  own_data = data is None
  data = data or make_data(config)
  num_steps = total_steps(config, data.num_records)
  factory, schedule = make_factory(config, mesh, num_steps)
  manager = workdirs.make_manager(workdir, config.checkpoint)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))

  check_saved_config = lambda step, step_dir: resume.check(
      workdirs.read_config(step_dir), config, step, str(workdir))
  start, restored = workdirs.restore_latest(
      manager, factory.saved(factory.abstract), data.iterator,
      strict=config.checkpoint.strict_restore, check=check_saved_config)
  if start is not None:
    state = factory.from_saved(restored, config.init, init_rng)
  else:
    start = 0
    state = factory.initial_state(config.init, init_rng)
  if jax.process_index() == 0:
    workdirs.write_config(workdir, config)

  train_step = step_lib.jit_train_step(config, factory, schedule, mesh)

  reporter = metrics_lib.Reporter(workdir, start, num_steps, config.train.log_every_steps)
  reporter.write(f"steps {start} -> {num_steps}, mesh {dict(mesh.shape)}, "
                 f"{factory.num_trainable():,} of {factory.num_params():,} parameters train")
  save = lambda step, force=False: workdirs.save(
      manager, step, factory.saved(state), config, data.iterator, force=force)
  try:
    with _Sigterm() as sigterm:
      step = start
      pending = None   # (step, device metrics) of the last dispatched step
      while step < num_steps:
        batch = sharding.global_batch(next(data.iterator), mesh)
        state, metrics = train_step(state, batch, step_rng)
        if pending is not None:
          _report(reporter, *pending, config.train.on_nonfinite)
        step += 1
        pending = (step, metrics)
        if _preempted(sigterm, manager, step):
          reporter.write(f"SIGTERM: saving step {step} and exiting")
          break
        if step % config.checkpoint.every_steps == 0 and step < num_steps:
          save(step)
      if pending is not None:
        _report(reporter, *pending, config.train.on_nonfinite)
      if step not in manager.all_steps():
        save(step, force=True)
      workdirs.seal(manager)   # the last step's checksums
  finally:
    manager.wait_until_finished()
    manager.close()
    reporter.close()
    if own_data and hasattr(data.iterator, "close"):
      data.iterator.close()   # stops Grain's worker processes
  if jax.process_index() == 0:
    print(_finished_message(workdir, step, config))
  return state


def _preempted(sigterm: _Sigterm, manager, step: int) -> bool:
  if jax.process_count() > 1:
    # All hosts must agree on the step; JAX's preemption service relays SIGTERM to each of them.
    return manager.reached_preemption(step)
  return sigterm.received


def _report(reporter: metrics_lib.Reporter, step: int, device_metrics: dict[str, Any],
            on_nonfinite: str) -> None:
  host = jax.device_get(device_metrics)
  record = reporter.report(step, host)
  if not record["finite"]:
    message = (f"step {step}: non-finite loss ({record['loss']}) or gradient norm "
               f"({record['grad_norm']}); that update was not applied")
    if on_nonfinite == "skip":
      reporter.write(message + " (train.on_nonfinite=skip)")
    else:
      raise FloatingPointError(message + ". Set --config.train.on_nonfinite=skip to go on.")


def _finished_message(workdir: pathlib.Path, step: int, config) -> str:
  images = sorted(p for p in pathlib.Path(config.data.image_dir).glob("*") if p.is_file())
  image = images[0] if images else "IMAGE.jpg"
  step_dir = workdirs.checkpoints_dir(workdir) / str(step)
  message = (f"\nTraining done at step {step}. Checkpoint: {step_dir}\n"
             f"Chat with it:\n  python -m llava_jax.chat --ckpt={workdir} --image={image}\n")
  if config.lora.rank > 0:
    return message + (
        f"Export the adapters for PEFT, or merged into a llava-hf model:\n"
        f"  python -m llava_jax.convert to-peft --ckpt={workdir} --out={workdir}/peft\n"
        f"  python -m llava_jax.convert to-hf --merge_lora --ckpt={workdir} --out={workdir}/hf\n")
  return message + (f"Export it to Hugging Face format:\n"
                    f"  python -m llava_jax.convert to-hf --ckpt={workdir} --out={workdir}/hf\n")
