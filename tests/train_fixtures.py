"""Shared by the training tests: a shrunken stage config and synthetic Batch-contract data."""

import json
import time

import grain
import jax
import ml_collections
import numpy as np

from llava_jax.config import schema
from llava_jax.train import loop
import tiny

# The tiny training config lives in tests/tiny.py; kept under its old names for the callers.
TINY_VISION = tiny.TRAIN_VISION
TINY_LLM = tiny.TRAIN_LLM
tiny_config = tiny.train_config


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
    num_image = schema.num_image_tokens(self.model)
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
# XLA compiles each distinct train step once per checkout instead of once per run. Not under
# the tests' temporary root (tests/conftest.py), which each process removes when it ends.
COMPILATION_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": str(tiny.REPO / ".pytest_cache" / "xla_compilation_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def use_compilation_cache() -> None:
  """In this process (subprocesses get `COMPILATION_CACHE` in their environment)."""
  for name, value in COMPILATION_CACHE.items():
    jax.config.update(name.lower(), value if name.endswith("_DIR") else int(value))
