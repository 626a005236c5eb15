"""Peak host memory of `from-hf` and `to-hf` on a large random llava-hf checkpoint.

  python -m llava_jax.bench.convert_memory --workdir=/tmp/convert_bench \
      [--preset=llava15_7b] [--llm_dim=2048 --llm_layers=24 --llm_mlp=5504]

Writes a bfloat16 llava-hf checkpoint of a preset's shapes (default llava15_7b; the --llm_*
flags shrink the decoder to fit small machines) as 5 GB safetensors shards, tensor by tensor,
then runs each conversion in its own process and reports its peak RSS (`wait4` ru_maxrss) next
to the checkpoint size. The bar: well under two checkpoint sizes. Needs disk for three copies.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
import ml_dtypes
import numpy as np

from llava_jax.config import schema
from llava_jax.convert import exporter
from llava_jax.convert import hf
from llava_jax.convert import hf_config
from llava_jax.convert import tensor_files

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_string("workdir", "/tmp/llava_convert_bench", "Scratch directory.")
  flags.DEFINE_string("preset", "llava15_7b", "Model preset (llava_jax/config/schema.py).")
  flags.DEFINE_integer("llm_dim", None, "Override: decoder width (heads = dim / 128).")
  flags.DEFINE_integer("llm_layers", None, "Override: decoder depth.")
  flags.DEFINE_integer("llm_mlp", None, "Override: decoder MLP width.")
  flags.DEFINE_bool("keep", False, "Keep the scratch directory.")


def _model_cfg():
  model_cfg = schema.model_config(FLAGS.preset)
  if FLAGS.llm_dim:
    model_cfg.llm.dim = FLAGS.llm_dim
    model_cfg.llm.heads = model_cfg.llm.kv_heads = FLAGS.llm_dim // 128
  if FLAGS.llm_layers:
    model_cfg.llm.layers = FLAGS.llm_layers
  if FLAGS.llm_mlp:
    model_cfg.llm.mlp_dim = FLAGS.llm_mlp
  return model_cfg


def write_random_checkpoint(directory: pathlib.Path, model_cfg) -> int:
  """A bf16 llava-hf checkpoint of `model_cfg`'s shapes, written one tensor at a time.

  Names and shapes come from our own name map (no torch needed). Values are cheap constants
  per tensor: memory and I/O are what is measured, not numerics. Returns bytes written.
  """
  shapes = hf.param_shapes(model_cfg)
  directory.mkdir(parents=True)
  writer = tensor_files.ShardedSafetensorsWriter(directory, max_shard_bytes=5 * 10**9)
  total = 0
  for i, (name, entry) in enumerate(hf.hf_names(model_cfg).items()):
    ours = shapes[entry.path] if entry.layer is None else shapes[entry.path][1:]
    tensor = np.full(entry.transform.hf_shape(ours), 0.01 * (i % 97), ml_dtypes.bfloat16)
    writer.add(exporter.on_disk_name(name), tensor)
    total += tensor.nbytes
  writer.close()
  llava_cfg = hf_config.to_hf(model_cfg)
  llava_cfg.dtype = "bfloat16"
  llava_cfg.save_pretrained(directory)
  return total


def _peak_rss_of(command: list[str]) -> tuple[float, float]:
  """Runs `command`; returns (peak RSS in GiB, wall seconds)."""
  start = time.time()
  process = subprocess.Popen(command)
  _, status, usage = os.wait4(process.pid, 0)
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"{' '.join(command)} failed with status {status}")
  return usage.ru_maxrss / 2**20, time.time() - start   # ru_maxrss is in KiB on Linux


def main(argv):
  del argv
  work = pathlib.Path(FLAGS.workdir)
  if work.exists():
    shutil.rmtree(work)
  hf_dir, ours, back = work / "hf", work / "ours", work / "hf_again"
  start = time.time()
  model_cfg = _model_cfg()
  size = write_random_checkpoint(hf_dir, model_cfg)
  print(f"checkpoint {FLAGS.preset} (llm {model_cfg.llm.dim}x{model_cfg.llm.layers}): "
        f"{size / 2**30:.2f} GiB, {size // 2} bf16 params, written in {time.time() - start:.0f}s",
        flush=True)
  convert = [sys.executable, "-m", "llava_jax.convert"]
  results = {"checkpoint_gib": round(size / 2**30, 2), "params": size // 2}
  for name, command in (("from_hf", convert + ["from-hf", f"--hf={hf_dir}", f"--out={ours}"]),
                        ("to_hf", convert + ["to-hf", f"--ckpt={ours}", f"--out={back}"])):
    rss, seconds = _peak_rss_of(command)
    results[name] = {"peak_rss_gib": round(rss, 2), "seconds": round(seconds, 1),
                     "peak_over_checkpoint": round(rss / (size / 2**30), 2)}
    print(f"{name}: peak RSS {rss:.2f} GiB = {rss / (size / 2**30):.2f} x checkpoint, "
          f"{seconds:.0f}s", flush=True)
  print(json.dumps(results))
  if not FLAGS.keep:
    shutil.rmtree(work)


if __name__ == "__main__":
  define_flags()
  app.run(main)
