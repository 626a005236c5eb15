"""Peak host memory of `from-hf` and `to-hf` on a large random llava-hf checkpoint.

  python -m llava_jax.convert.bench_memory --workdir=/tmp/convert_bench [--llm_layers=24]

Writes a random bfloat16 llava-hf checkpoint (CLIP ViT-L/14-336 + a LLaMA of the given size,
sharded safetensors, generated tensor by tensor), then runs each conversion in its own process
and reports its peak RSS (`wait4` ru_maxrss) next to the checkpoint size. The acceptance bar is
peak RSS well under two checkpoint sizes. Needs torch (meta-device shapes only) and disk for
three copies of the checkpoint.
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

from llava_jax.convert import tensor_files

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/llava_convert_bench", "Scratch directory.")
_LLM_DIM = flags.DEFINE_integer("llm_dim", 2048, "Decoder width.")
_LLM_LAYERS = flags.DEFINE_integer("llm_layers", 24, "Decoder depth.")
_LLM_MLP = flags.DEFINE_integer("llm_mlp", 5504, "Decoder MLP width.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the scratch directory.")


def _llava_config():
  import transformers  # pylint: disable=g-import-not-at-top
  heads = _LLM_DIM.value // 128
  return transformers.LlavaConfig(
      vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, image_size=336, patch_size=14,
                         projection_dim=768),
      text_config=dict(model_type="llama", vocab_size=32064, hidden_size=_LLM_DIM.value,
                       intermediate_size=_LLM_MLP.value, num_hidden_layers=_LLM_LAYERS.value,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=4096),
      image_token_index=32000, projector_hidden_act="gelu", vision_feature_layer=-2,
      vision_feature_select_strategy="default", dtype="bfloat16")


def write_random_checkpoint(directory: pathlib.Path) -> int:
  """Random bf16 llava-hf checkpoint, one tensor in memory at a time; returns bytes written."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config = _llava_config()
  with torch.device("meta"):
    shapes = {k: tuple(v.shape) for k, v in
              transformers.LlavaForConditionalGeneration(config).state_dict().items()}
  directory.mkdir(parents=True)
  writer = tensor_files.ShardedSafetensorsWriter(directory, max_shard_bytes=10**9)
  rng = np.random.default_rng(0)
  total = 0
  for key, shape in shapes.items():
    # Save-time names (language_model.model.*, vision_tower.*) as save_pretrained writes them.
    if key.startswith("model.language_model."):
      key = "language_model.model." + key[len("model.language_model."):]
    elif key.startswith("model."):
      key = key[len("model."):]
    elif key == "lm_head.weight":
      key = "language_model.lm_head.weight"
    tensor = rng.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16)
    writer.add(key, tensor)
    total += tensor.nbytes
  writer.close()
  config.save_pretrained(directory)
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
  work = pathlib.Path(_WORKDIR.value)
  if work.exists():
    shutil.rmtree(work)
  hf_dir, ours, back = work / "hf", work / "ours", work / "hf_again"
  start = time.time()
  size = write_random_checkpoint(hf_dir)
  print(f"random checkpoint: {size / 2**30:.2f} GiB ({size // 2} bf16 params) "
        f"in {time.time() - start:.0f}s", flush=True)
  convert = [sys.executable, "-m", "llava_jax.convert"]
  results = {"checkpoint_gib": size / 2**30, "params": size // 2}
  for name, command in (("from_hf", convert + ["from-hf", f"--hf={hf_dir}", f"--out={ours}"]),
                        ("to_hf", convert + ["to-hf", f"--ckpt={ours}", f"--out={back}"])):
    rss, seconds = _peak_rss_of(command)
    results[name] = {"peak_rss_gib": round(rss, 2), "seconds": round(seconds, 1),
                     "peak_over_checkpoint": round(rss / (size / 2**30), 2)}
    print(f"{name}: peak RSS {rss:.2f} GiB = {rss / (size / 2**30):.2f} x checkpoint, "
          f"{seconds:.0f}s", flush=True)
  print(json.dumps(results))
  if not _KEEP.value:
    shutil.rmtree(work)


if __name__ == "__main__":
  app.run(main)
