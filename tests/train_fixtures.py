"""Shared by the training tests: a shrunken stage config and synthetic Batch-contract data."""

import json
import os
import tempfile
import time

import grain
import jax
import ml_collections
import numpy as np

from configs import common
from configs import finetune
from configs import finetune_lora
from configs import pretrain
from llava_jax.train import loop

# Small enough that a train step compiles in seconds on 2 CPU cores.
TINY_VISION = dict(image_size=16, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64)
TINY_LLM = dict(vocab_size=2048, dim=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp_dim=128)


def tiny_config(stage: str = "finetune", **train) -> ml_collections.ConfigDict:
  """The demo preset of a stage config with a shrunken model and a few steps (unlocked)."""
  config = {"finetune": finetune, "pretrain": pretrain,
            "finetune_lora": finetune_lora}[stage].get_config("demo")
  config.model.vision.update(TINY_VISION)
  config.model.llm.update(TINY_LLM)
  config.data.max_len = 48
  config.data.num_workers = 0
  config.train.update({**dict(steps=4, batch_size=8, log_every_steps=1), **train})
  config.checkpoint.every_steps = 2
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))   # all (8 fake) devices in tests
  return config


def command_line_overrides(config: ml_collections.ConfigDict) -> list[str]:
  """`--config.model...` flags that shrink the demo preset like `tiny_config` does."""
  flags = [f"--config.model.vision.{k}={v}" for k, v in TINY_VISION.items()]
  flags += [f"--config.model.llm.{k}={v}" for k, v in TINY_LLM.items()]
  flags += [f"--config.data.max_len={config.data.max_len}", "--config.data.num_workers=0",
            f"--config.train.batch_size={config.train.batch_size}",
            "--config.train.log_every_steps=1"]
  return flags


class _SyntheticSample:
  """index → one sample of the Batch contract: image run, a prompt, a supervised answer, padding."""

  def __init__(self, config: ml_collections.ConfigDict, seed: int):
    self.model, self.max_len, self.seed = config.model, config.data.max_len, seed

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((self.seed, index))
    num_image = common.num_image_tokens(self.model)
    length = int(rng.integers(num_image + 8, self.max_len + 1))
    ids = rng.integers(5, 64, self.max_len).astype(np.int32)   # small vocab: learnable
    ids[1:1 + num_image] = self.model.image_token_id
    ids[length:] = 3   # pad
    labels = np.where(np.arange(self.max_len) >= num_image + 4, ids, -100).astype(np.int32)
    labels[length:] = -100
    size = self.model.vision.image_size
    return {
        "input_ids": ids,
        "labels": labels,
        "segment_ids": (np.arange(self.max_len) < length).astype(np.int32),
        "positions": np.arange(self.max_len, dtype=np.int32),
        "pixels": rng.normal(size=(1, size, size, 3)).astype(np.float32),
    }


def synthetic_data(config: ml_collections.ConfigDict, num_records: int = 24, seed: int = 0
                   ) -> loop.Data:
  """An endless, checkpointable (Grain) iterator of synthetic global batches."""
  ds = (grain.MapDataset.range(num_records).shuffle(seed=seed).repeat(None)
        .map(_SyntheticSample(config, seed))
        .batch(config.train.batch_size, drop_remainder=True))
  return loop.Data(iterator=iter(ds.to_iter_dataset()), num_records=num_records)


def batch_of(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  return next(synthetic_data(config, seed=seed).iterator)


class FaultyIterator:
  """Wraps a Grain iterator: on the `at`-th batch (1-based) calls `fault(batch)` — e.g. send this
  process SIGTERM, or poison the batch — and returns what it returns. State passes through."""

  def __init__(self, iterator, at: int, fault):
    self.iterator, self.at, self.fault, self.count = iterator, at, fault, 0

  def __next__(self):
    batch = next(self.iterator)
    self.count += 1
    return self.fault(batch) if self.count == self.at else batch

  # Grain's checkpoint handler stores the state of non-Grain iterators as bytes.
  def get_state(self) -> bytes:
    return json.dumps(self.iterator.get_state()).encode()

  def set_state(self, state: bytes):
    self.iterator.set_state(json.loads(state))


def train_with_slow_saves(workdir: str, steps: int, every_steps: int) -> None:
  """Trains `tiny_config` in `workdir` with each checkpoint save taking an extra second, so that a
  test can kill the process in the middle of one (used in a subprocess)."""
  original = grain.checkpoint.CheckpointHandler.save

  def slow_save(self, *args, **kwargs):
    time.sleep(1.0)
    return original(self, *args, **kwargs)

  grain.checkpoint.CheckpointHandler.save = slow_save
  config = tiny_config(steps=steps)
  config.checkpoint.every_steps = every_steps
  loop.run(config, workdir, synthetic_data(config))


# Shared by the training tests' processes (and their subprocesses, through the environment):
# XLA compiles each distinct train step once per machine instead of once per run.
COMPILATION_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "llava_jax_test_xla_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def use_compilation_cache() -> None:
  """In this process (subprocesses get `COMPILATION_CACHE` in their environment)."""
  for name, value in COMPILATION_CACHE.items():
    jax.config.update(name.lower(), value if name.endswith("_DIR") else int(value))
