r"""Generation benchmark: prefill tokens/s, time to first token, decode tokens/s (batch 1 and 8).

  python -m llava_jax.bench.generate                        # tiny preset, CPU, + torch reference
  python -m llava_jax.bench.generate --preset=llava15_7b --dtype=bfloat16 --llm_layers=32 \
      --torch=false                                          # GPU: 7B-shaped, roofline fraction

Random weights (speed does not depend on their values); EOS is disabled so every row decodes
exactly --new_tokens tokens. On CPU the same config also runs through transformers' torch
`generate` (greedy, `min_new_tokens` = `max_new_tokens`) and the decode speed ratio is printed.
Batch-1 decode reads every decoder weight once per token, so its memory-bandwidth roofline is
param_bytes / step_time versus the device's bandwidth (--hbm_gbps, H100 SXM: 3350 GB/s).
Imports neither Grain nor the data pipeline (the GPU box lacks them).
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax import model as model_lib
from llava_jax.config import schema
from llava_jax.infer import generate

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_string("preset", "tiny", "Model preset in llava_jax/config/schema.py.")
  flags.DEFINE_integer("llm_layers", None, "Cut the decoder to this many layers.")
  flags.DEFINE_string("dtype", "float32", "Compute and parameter dtype.")
  flags.DEFINE_integer("prompt_text", 32, "Text tokens after the image.")
  flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
  flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
  flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")
  flags.DEFINE_bool("torch", True, "Also time transformers' torch generate (CPU).")
  flags.DEFINE_integer(
    "torch_threads", 1, "torch intra-op threads (0 = torch's default). On a small shared CPU one "
    "thread was the fastest torch setting (2 threads ran 10x slower under load).")
  flags.DEFINE_float("hbm_gbps", 3350.0, "Device memory bandwidth (H100 SXM 3350).")
  flags.DEFINE_string("json", None, "Also write the results here.")


def _config():
  cfg = schema.model_config(FLAGS.preset)
  if FLAGS.llm_layers:
    cfg.llm.layers = FLAGS.llm_layers
  cfg.dtype = cfg.param_dtype = FLAGS.dtype
  return cfg


def _random_params(module, cfg):
  """Random parameters made on the device (a 7B model never exists on the host)."""
  size = cfg.vision.image_size
  init = jax.jit(lambda key: model_lib.unbox(module.init(
      key, jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 1, size, size, 3), jnp.float32))))
  return init(jax.random.key(0))["params"]


def _prompts(cfg, batch: int, rng):
  n = schema.num_image_tokens(cfg)
  text = rng.integers(10, min(cfg.llm.vocab_size, 30000), size=(batch, FLAGS.prompt_text))
  ids = [[1] + [cfg.image_token_id] * n + row.tolist() for row in text]
  pixels = rng.normal(size=(batch, 1, cfg.vision.image_size, cfg.vision.image_size, 3))
  return ids, pixels.astype(np.float32)


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def time_ours(gen: generate.Generator, ids, pixels, new_tokens: int, repeats: int) -> dict:
  """Prefill (= time to first token) and decode timings of the jitted programs."""
  n, shapes, ids_BxT, pixels, lengths_B, max_new_B, sample_kw = gen.prepare(
      ids, pixels, None, new_tokens)
  inputs = gen.place(ids_BxT, pixels, lengths_B, max_new_B)

  def prefill():
    state = gen.start(gen.params, *inputs, sample_kw, max_new=shapes.max_new)
    jax.block_until_ready(state["tokens"])
    return state

  def full():
    state = gen.decode_until(gen.params, prefill(), np.int32(new_tokens),
                          np.zeros(shapes.batch, bool), sample_kw)
    return np.asarray(state["count"])

  counts = full()  # compiles both programs
  assert (counts[:n] == new_tokens).all(), f"rows stopped early: {counts[:n]}"
  t_prefill = _median_time(prefill, repeats)
  t_full = _median_time(full, repeats)
  t_decode = max(t_full - t_prefill, 1e-9)
  prompt_tokens = sum(len(p) for p in ids)
  return dict(batch=n, prompt_len=len(ids[0]), new_tokens=new_tokens, ttft_s=t_prefill,
              prefill_tok_s=prompt_tokens / t_prefill, decode_step_s=t_decode / (new_tokens - 1),
              decode_tok_s=n * (new_tokens - 1) / t_decode, total_s=t_full)


def time_torch(cfg, ids, pixels, new_tokens: int, repeats: int) -> dict:
  """The same prompts through transformers' LlavaForConditionalGeneration.generate."""
  import torch  # pylint: disable=g-import-not-at-top  # bench/test extra only
  import transformers  # pylint: disable=g-import-not-at-top

  from llava_jax.convert import hf_config  # pylint: disable=g-import-not-at-top

  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  torch.manual_seed(0)
  hf = transformers.LlavaForConditionalGeneration(hf_config.to_hf(cfg)).eval()
  inputs = dict(input_ids=torch.tensor(ids),
                pixel_values=torch.from_numpy(pixels[:, 0]).permute(0, 3, 1, 2).contiguous())

  def run(n):
    with torch.no_grad():
      return hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)

  run(2)  # warm-up
  t_prefill = _median_time(lambda: run(1), repeats)
  t_full = _median_time(lambda: run(new_tokens), repeats)
  t_decode = max(t_full - t_prefill, 1e-9)
  return dict(batch=len(ids), ttft_s=t_prefill,
              prefill_tok_s=sum(len(p) for p in ids) / t_prefill,
              decode_tok_s=len(ids) * (new_tokens - 1) / t_decode, threads=torch.get_num_threads())


def main(argv):
  del argv
  cfg = _config()
  module = model_lib.build(cfg)
  params = _random_params(module, cfg)
  llm_bytes = sum(x.nbytes for x in jax.tree.leaves(params["llm"]))
  # EOS = -1 never matches: every row runs the full budget.
  gen = generate.Generator(module, params, eos_ids=[-1], pad_id=0, max_len=cfg.llm.max_len)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"preset {cfg.preset}, decoder layers {cfg.llm.layers}, dtype {cfg.dtype}, "
        f"decoder params {llm_bytes / 1e9:.2f} GB")
  rng = np.random.default_rng(0)
  rows = []
  for batch in map(int, FLAGS.batch_sizes):
    ids, pixels = _prompts(cfg, batch, rng)
    ours = time_ours(gen, ids, pixels, FLAGS.new_tokens, FLAGS.repeats)
    row = dict(ours=ours)
    if batch == 1:
      achieved = llm_bytes / ours["decode_step_s"]
      row["roofline"] = dict(param_gb_s=achieved / 1e9,
                             fraction=achieved / (FLAGS.hbm_gbps * 1e9))
    if FLAGS.torch:
      row["torch"] = time_torch(cfg, ids, pixels, FLAGS.new_tokens, FLAGS.repeats)
      row["decode_speedup_vs_torch"] = ours["decode_tok_s"] / row["torch"]["decode_tok_s"]
    rows.append(row)
    line = (f"batch {batch:2d}: prompt {ours['prompt_len']} tok, "
            f"TTFT {ours['ttft_s'] * 1e3:8.1f} ms, prefill {ours['prefill_tok_s']:10.0f} tok/s, "
            f"decode {ours['decode_tok_s']:8.1f} tok/s ({ours['decode_step_s'] * 1e3:.2f} ms/step)")
    if "roofline" in row:
      line += (f", weights read at {row['roofline']['param_gb_s']:.0f} GB/s = "
               f"{100 * row['roofline']['fraction']:.1f}% of {FLAGS.hbm_gbps:.0f} GB/s")
    if "torch" in row:
      t = row["torch"]
      line += (f"\n          torch generate: TTFT {t['ttft_s'] * 1e3:.1f} ms, decode "
               f"{t['decode_tok_s']:.1f} tok/s -> ours is {row['decode_speedup_vs_torch']:.1f}x")
    print(line, flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(dict(preset=cfg.preset, llm_layers=cfg.llm.layers, dtype=cfg.dtype,
                     device=device.device_kind, llm_param_bytes=llm_bytes, rows=rows), f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
