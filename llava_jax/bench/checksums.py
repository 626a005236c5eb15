r"""What checkpoint checksums cost: seal and verify a real save, then extrapolate to a 7B save.

  python -m llava_jax.bench.checksums [--gib=2] [--repeats=3] [--preset=llava15_7b]

Saves `--gib` GiB of float32 arrays through `workdirs.save` (Orbax, as training does), then
times `workdirs.seal` (SHA-256 of every file of the step, `checksums.json`) and
`workdirs.verify_step` (what every restore runs first), each the median of `--repeats`. The
files were just written, so they are in the page cache: this is the hashing cost, not the disk.
The rate is per byte on disk (after Orbax's zstd). The size of a stage-2 save of the
preset (`configs/finetune.py`: params in `param_dtype` plus Adam's state of the trainable ones
in `mu_dtype`, from `jax.eval_shape`, nothing allocated) before compression (weights compress
little, so this is an upper bound) gives the extrapolated seconds. Measured on this machine's
CPUs, under whatever load it has (printed): label it so.
"""

import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from llava_jax import sharding
from llava_jax.checkpoint import workdirs
from llava_jax.config import check as config_check
from llava_jax.config import schema
from llava_jax.train import state as state_lib

GIB = 1 << 30
FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_float("gib", 2.0, "GiB saved and hashed.")
  flags.DEFINE_integer("repeats", 3, "Timed seals and verifies (median).")
  flags.DEFINE_string("preset", "llava15_7b", "Preset of configs/finetune.py to extrapolate to.")
  flags.DEFINE_string("workdir", None, "Scratch directory (default: a temporary one).")


def save_bytes(preset: str) -> dict[str, int]:
  """Bytes a stage-2 checkpoint of `preset` holds: {'params': ..., 'opt_state': ...}."""
  recipe = os.path.join(schema.RECIPE_DIR, "finetune.py")
  config = config_check.load_config_file(recipe).get_config(preset)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  factory, _ = state_lib.make_factory(config, mesh, num_steps=1)
  saved = factory.saved(factory.abstract)
  return {key: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(saved[key]))
          for key in ("params", "opt_state")}


def _state(num_bytes: int) -> dict:
  """float32 arrays of 64 MiB each (random values; Orbax's zstd shrinks them a little)."""
  rng = np.random.default_rng(0)
  per_array = 64 << 20
  count = max(1, num_bytes // per_array)
  return {"step": np.int32(1), "opt_state": {},
          "params": {f"w{i}": rng.random(per_array // 4, np.float32) for i in range(count)}}


def time_seal_and_verify(workdir: pathlib.Path, num_bytes: int, repeats: int):
  """(bytes hashed, [seal seconds], [verify seconds]) over `repeats` sealings of one save."""
  config = ml_collections.ConfigDict({"checkpoint": {"max_to_keep": 1, "async_save": False}})
  manager = workdirs.make_manager(workdir, config.checkpoint)
  try:
    workdirs.save(manager, 1, _state(num_bytes), config)
    manager.wait_until_finished()   # the save itself is not timed
    step_dir = workdirs.step_dir(manager, 1)
    seals, verifies = [], []
    for _ in range(repeats):
      manager.llava_unsealed[1] = config.to_dict()   # as right after the save
      start = time.perf_counter()
      workdirs.seal(manager)
      seals.append(time.perf_counter() - start)
      start = time.perf_counter()
      assert workdirs.verify_step(step_dir)
      verifies.append(time.perf_counter() - start)
    hashed = sum(p.stat().st_size for p in step_dir.rglob("*")
                 if p.is_file() and p.name != workdirs.CHECKSUMS)
  finally:
    manager.close()
  return hashed, seals, verifies


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # Orbax logs a dozen INFO lines per save
  workdir = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="bench_checksums_"))
  try:
    hashed, seals, verifies = time_seal_and_verify(workdir / "run", int(FLAGS.gib * GIB),
                                                   FLAGS.repeats)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  sizes = save_bytes(FLAGS.preset)
  total = sum(sizes.values())
  print(f"checksums on this machine's CPUs ({len(os.sched_getaffinity(0))} cores, load average "
        f"{os.getloadavg()[0]:.1f}), {hashed / GIB:.2f} GiB on disk in the page cache, median of "
        f"{FLAGS.repeats}:")
  rates = {}
  for name, times in (("seal", seals), ("verify", verifies)):
    median = statistics.median(times)
    rates[name] = hashed / GIB / median
    print(f"  {name:6s} {median:6.2f} s  {rates[name]:5.2f} GiB/s  (min {min(times):.2f} s, "
          f"max {max(times):.2f} s)  [CPU measured]")
  print(f"{FLAGS.preset} stage-2 save (configs/finetune.py): params {sizes['params'] / GIB:.1f} "
        f"GiB + Adam state {sizes['opt_state'] / GIB:.1f} GiB = {total / GIB:.1f} GiB before "
        "compression")
  for name, rate in rates.items():
    print(f"  {name:6s} {total / GIB / rate:6.1f} s  [CPU measured + extrapolated]")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
