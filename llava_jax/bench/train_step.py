r"""Training-step benchmark: step time, throughput, TFLOP/s and MFU of the real jitted train step.

  python -m llava_jax.bench.train_step --config=configs/finetune.py --steps=10
  python -m llava_jax.bench.train_step --config=configs/pretrain.py:llava15_7b --config.model.dtype=bfloat16
  python -m llava_jax.bench.train_step --table bench_results/*.json     # one table from earlier runs

Batches are synthetic (the Batch contract: BOS, the images' tokens, random text, then padding),
made in numpy, so the benchmark needs neither Grain nor a dataset; `--data=pipeline` instead
reads real batches of `config.data` (packed with `--config.data.pack=true`) before timing, one
per step, and counts the samples and real tokens they hold. The step is the training
loop's own `train_step`, jitted with the state's shardings and donation as the loop does; the time
is the median of `--steps` steps after `--warmup` ones, each blocked until ready. The loss is the
loop's `train/loss.py:model_loss` (`config.train.loss_chunk_len`, or `--loss_chunk`); text-only
batches (`--images_per_row=0`) skip the vision tower. Single process. FLOPs follow
`llava_jax/bench/flops.py` (MaxText's accounting). On CPU the same batch also goes through
transformers' torch LLaVA step (`llava_jax/bench/torch_reference.py`), alternating with ours step by
step (ABAB), and the median of the per-pair ratios is printed with their spread (min-max).
Results are written as JSON (`--out`).
"""

import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from llava_jax import sharding
from llava_jax.bench import flops as flops_lib
from llava_jax.config import schema
from llava_jax.train import optimizer
from llava_jax.train import state as state_lib
from llava_jax.train import step as step_lib

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  config_flags.DEFINE_config_file("config", None, "Stage config file (`file.py:arg`).",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  flags.DEFINE_float("fill", 1.0, "Each row's non-pad length is drawn from "
                     "[fill·T, T]; 1.0 = full rows.")
  flags.DEFINE_integer("images_per_row", None, "Images per row (default "
                       "config.data.max_images; 0 = text only, the tower never runs).")
  flags.DEFINE_enum("torch", "auto", ["auto", "yes", "no"], "Also time transformers' "
                    "torch step on the same batch (auto: on CPU only).")
  flags.DEFINE_integer("loss_chunk", None, "Overrides config.train.loss_chunk_len: 0 = "
                       "cross-entropy from full [B, T, V] logits; N > 0 = chunked.")
  flags.DEFINE_enum("data", "synthetic", ["synthetic", "pipeline"], "synthetic: one "
                    "generated batch; pipeline: real batches of config.data from the Grain "
                    "pipeline (read before timing), so samples/s counts packed samples.")
  flags.DEFINE_string("name", None, "Row name in tables (default: preset and stage).")
  flags.DEFINE_string("out", None, "JSON result path (default bench_results/NAME.json).")
  flags.DEFINE_bool("table", False, "Print one table from the JSON results named as "
                    "arguments (nothing is benchmarked).")


BOS_ID, PAD_ID, FIRST_TEXT_ID = 1, 0, 5


def synthetic_batch(model_cfg, *, batch_size: int, seq_len: int, images_per_row: int,
                    fill: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
  """A Batch-contract batch: per row BOS, `images_per_row` runs of image tokens, random text, pad.

  Text tokens are supervised; BOS, image tokens and padding are not (as in LLaVA's stage 1).
  """
  image_tokens = schema.num_image_tokens(model_cfg)
  prefix = 1 + images_per_row * image_tokens
  if not 0 < fill <= 1:
    raise ValueError(f"--fill={fill}: expected 0 < fill <= 1")
  if prefix + 2 > max(1, int(fill * seq_len)):
    raise ValueError(f"sequence length {seq_len} (fill {fill}) cannot hold BOS + "
                     f"{images_per_row}×{image_tokens} image tokens + text")
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(FIRST_TEXT_ID, model_cfg.llm.vocab_size, (batch_size, seq_len),
                           dtype=np.int32)
  input_ids[input_ids == model_cfg.image_token_id] = FIRST_TEXT_ID  # text never looks like an image
  input_ids[:, 0] = BOS_ID
  input_ids[:, 1:prefix] = model_cfg.image_token_id
  labels = input_ids.copy()
  labels[:, :prefix] = -100
  lengths = rng.integers(int(np.ceil(fill * seq_len)), seq_len + 1, batch_size)
  valid = np.arange(seq_len)[None, :] < lengths[:, None]
  input_ids[~valid] = PAD_ID
  labels[~valid] = -100
  size = model_cfg.vision.image_size
  return dict(
      input_ids=input_ids, labels=labels.astype(np.int32),
      segment_ids=valid.astype(np.int32),
      positions=np.where(valid, np.arange(seq_len, dtype=np.int32)[None, :], 0).astype(np.int32),
      pixels=rng.standard_normal((batch_size, images_per_row, size, size, 3), dtype=np.float32))


def trained_parts(abstract_params, trainable) -> dict[str, bool]:
  """Which top-level parts (vision, projector, llm) have at least one trainable parameter."""
  train_tree, _ = optimizer.split_trainable(abstract_params, trainable)
  return {part: part in train_tree for part in ("vision", "projector", "llm")}


def peak_memory(device, compiled) -> tuple[int | None, str]:
  """(bytes, source): the allocator's peak where the runtime reports it, else XLA's estimate."""
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "allocator"
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None, "unavailable"
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return int(total), "xla_estimate"


@dataclasses.dataclass(frozen=True)
class StepSetup:
  """The loop's train step for a config, jitted (not yet compiled), and what it runs on."""
  mesh: jax.sharding.Mesh
  factory: state_lib.StateFactory
  jitted: Any              # jitted train_step(state, batch, rng) -> (state, metrics)
  parts: dict[str, bool]   # which of vision / projector / llm train


def setup_step(config, *, loss_chunk: int | None = None, total_steps: int = 1,
               devices=None) -> StepSetup:
  """Model, optimizer, state factory and the jitted step, sharded and donated as in the loop.

  The mesh is `config.mesh` over `devices` (default: all); `loss_chunk` overrides
  `config.train.loss_chunk_len`.
  """
  mesh = sharding.make_mesh(config.mesh, devices)
  factory, schedule = state_lib.make_factory(config, mesh, total_steps)
  jitted = step_lib.jit_train_step(config, factory, schedule, mesh, loss_chunk)
  return StepSetup(mesh, factory, jitted, trained_parts(factory.abstract.params,
                                                        factory.trainable))


def pipeline_batches(config, count: int) -> list[dict[str, np.ndarray]]:
  """`count` real batches of `config.data` (packed when `data.pack`), read before any timing."""
  from llava_jax.data import pipeline  # Grain: only this mode needs it
  iterator = pipeline.make_train_iterator(config.data, config.model,
                                          global_batch_size=config.train.batch_size,
                                          seed=config.seed)
  try:
    return [next(iterator) for _ in range(count)]
  finally:
    iterator.close()


def samples_in(batch: dict[str, np.ndarray]) -> int:
  """Samples in a batch: a row holds segments 1..k (k = 1 unpacked, 0 for an empty row)."""
  return int(batch["segment_ids"].max(axis=1).sum())


def benchmark(config, *, steps: int, warmup: int = 2, fill: float = 1.0,
              images_per_row: int | None = None, loss_chunk: int | None = None,
              compare_torch: bool | None = None, name: str | None = None,
              data: str = "synthetic") -> dict:
  """Builds state and step from `config`, times `steps` steps; returns the result dict.

  data="synthetic" repeats one generated batch; data="pipeline" runs each step on its own
  real batch of `config.data` (throughput then counts the samples and real tokens it holds).
  """
  model_cfg = config.model
  batch_size, seq_len = config.train.batch_size, config.data.max_len
  image_tokens = schema.num_image_tokens(model_cfg)
  loss_chunk = config.train.loss_chunk_len if loss_chunk is None else loss_chunk
  if data == "pipeline":
    if images_per_row is not None or fill != 1.0:
      raise ValueError("--images_per_row and --fill shape synthetic batches; with --data="
                       "pipeline set config.data.max_images / the data instead")
    host_batches = pipeline_batches(config, warmup + steps)
    images = config.data.max_images
  elif data == "synthetic":
    images = config.data.max_images if images_per_row is None else images_per_row
    host_batches = [synthetic_batch(model_cfg, batch_size=batch_size, seq_len=seq_len,
                                    images_per_row=images, fill=fill, seed=config.seed)]
  else:
    raise ValueError(f"data={data!r}: expected 'synthetic' or 'pipeline'")
  host_batch = host_batches[0]
  setup = setup_step(config, loss_chunk=loss_chunk,
                     total_steps=max(steps + warmup, 1))
  mesh, factory, jitted, parts = setup.mesh, setup.factory, setup.jitted, setup.parts
  batches = [sharding.global_batch(b, mesh) for b in host_batches]
  rng = jax.random.key(config.seed)
  state = factory.state_from_params(factory.random_params(rng))

  start = time.perf_counter()
  compiled = jitted.lower(state, batches[0], rng).compile()
  compile_time = time.perf_counter() - start

  device = mesh.devices.flat[0]
  if compare_torch is None:
    compare_torch = device.platform == "cpu" and data == "synthetic"
  torch_step = torch_info = None
  if compare_torch:
    from llava_jax.bench import (
      torch_reference,  # torch is a bench/test extra: import only when used
    )
    torch_step, torch_info = torch_reference.make_torch_train_step(
        model_cfg, host_batch, image_tokens=image_tokens, train_llm=parts["llm"],
        train_projector=parts["projector"], learning_rate=config.optim.lr,
        grad_clip_norm=config.optim.grad_clip_norm, seed=config.seed)

  # With torch, each of our steps is followed by one of its steps (ABAB): a load swing then
  # hits both halves of a pair, and the per-pair ratio cancels it.
  times, torch_times, torch_losses, losses, samples, nonpad = [], [], [], [], 0, 0
  for i in range(warmup + steps):
    host, batch = host_batches[i % len(batches)], batches[i % len(batches)]
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    if torch_step is not None:
      start = time.perf_counter()
      torch_loss = torch_step()
      torch_elapsed = time.perf_counter() - start
    if i >= warmup:
      times.append(elapsed)
      losses.append(float(metrics["loss"]))
      samples += samples_in(host)
      nonpad += int(host["segment_ids"].astype(bool).sum())
      if torch_step is not None:
        torch_times.append(torch_elapsed)
        torch_losses.append(torch_loss)
  step_time = statistics.median(times)

  devices = mesh.devices.size
  step_flops = flops_lib.train_step_flops(
      model_cfg, batch_size=batch_size, seq_len=seq_len, images_per_row=images,
      image_tokens=image_tokens, train_llm=parts["llm"], train_projector=parts["projector"],
      train_vision=parts["vision"])
  peak, peak_source = flops_lib.peak_flops(device)
  memory, memory_source = peak_memory(device, compiled)
  achieved = step_flops.total / step_time / devices
  result = dict(
      name=name or f"{model_cfg.preset}_{'+'.join(p for p, t in parts.items() if t)}",
      device_kind=device.device_kind, platform=device.platform, devices=devices,
      jax_version=jax.__version__, preset=model_cfg.preset, dtype=model_cfg.dtype,
      param_dtype=model_cfg.param_dtype, remat=model_cfg.remat, attention=model_cfg.attention,
      loss_chunk=loss_chunk,
      llm_layers=model_cfg.llm.layers, trained=[p for p, t in parts.items() if t],
      batch_size=batch_size, seq_len=seq_len, images_per_row=images, steps=steps,
      compile_time_s=compile_time, step_time_s=step_time, step_times_s=times,
      data=data, samples_per_step=samples / steps,
      tokens_per_s=batch_size * seq_len / step_time,
      nonpad_tokens_per_s=nonpad / steps / step_time,
      samples_per_s=samples / steps / step_time,
      flops_per_step=step_flops.as_dict(),
      tflops_per_s_per_device=achieved / 1e12,
      peak_tflops_per_device=peak / 1e12, peak_source=peak_source, mfu=achieved / peak,
      peak_memory_bytes=memory, memory_source=memory_source, losses=losses)

  if torch_step is not None:
    ratios = sorted(a / b for a, b in zip(times, torch_times))
    result["torch"] = dict(step_time_s=statistics.median(torch_times), step_times_s=torch_times,
                           losses=torch_losses, **torch_info)
    result["ratio_vs_torch"] = statistics.median(ratios)   # median of per-pair ratios (ABAB)
    result["ratio_spread"] = [ratios[0], ratios[-1]]        # min and max pair
  return result


def _gib(n):
  return "-" if n is None else f"{n / 2**30:.2f}"


TABLE_COLUMNS = (
    ("name", lambda r: r["name"]),
    ("device", lambda r: f"{r['device_kind']} x{r['devices']}"),
    ("dtype", lambda r: r["dtype"]),
    ("remat", lambda r: r["remat"]),
    ("attn", lambda r: r["attention"]),
    ("L", lambda r: str(r["llm_layers"])),
    ("BxT", lambda r: f"{r['batch_size']}x{r['seq_len']}"),
    ("compile s", lambda r: f"{r['compile_time_s']:.1f}"),
    ("step ms", lambda r: f"{1e3 * r['step_time_s']:.1f}"),
    ("tok/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
    ("CE chunk", lambda r: str(r["loss_chunk"] or "-")),
    ("TFLOP/s", lambda r: f"{r['tflops_per_s_per_device']:.3g}"),
    ("MFU", lambda r: f"{100 * r['mfu']:.1f}%" + ("*" if r["peak_source"] == "measured" else "")),
    ("mem GiB", lambda r: _gib(r["peak_memory_bytes"])),
    ("vs torch", lambda r: f"{r['ratio_vs_torch']:.2f}x" if "ratio_vs_torch" in r else "-"),
)


def format_table(results: list[dict]) -> str:
  """A Markdown table, one row per result (MFU* = against a measured, not a data-sheet, peak)."""
  rows = [[fmt(r) for _, fmt in TABLE_COLUMNS] for r in results]
  header = [name for name, _ in TABLE_COLUMNS]
  widths = [max(len(x) for x in col) for col in zip(header, *rows)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_result(r: dict) -> str:
  """The human summary of one run."""
  lines = [
      f"device        {r['device_kind']} x{r['devices']} ({r['platform']}, jax {r['jax_version']})",
      f"model         {r['preset']} L={r['llm_layers']} dtype={r['dtype']} remat={r['remat']} "
      f"attention={r['attention']} loss_chunk={r['loss_chunk']} trained={','.join(r['trained'])}",
      f"batch         {r['batch_size']} x {r['seq_len']} tokens, {r['images_per_row']} image(s)/row",
      f"compile       {r['compile_time_s']:.2f} s",
      f"step          {1e3 * r['step_time_s']:.2f} ms (median of {r['steps']})",
      f"tokens/s      {r['tokens_per_s']:,.0f} (non-pad {r['nonpad_tokens_per_s']:,.0f})",
      f"samples/s     {r['samples_per_s']:,.2f} ({r.get('samples_per_step', r['batch_size']):.1f}"
      f" per step, {r.get('data', 'synthetic')} batches)",
      f"TFLOP/s/dev   {r['tflops_per_s_per_device']:.4g} of {r['peak_tflops_per_device']:.4g} "
      f"({r['peak_source']} peak)",
      f"MFU           {100 * r['mfu']:.2f}%",
      f"peak memory   {_gib(r['peak_memory_bytes'])} GiB ({r['memory_source']})",
  ]
  if "torch" in r:
    lines.append(f"torch step    {1e3 * r['torch']['step_time_s']:.2f} ms "
                 f"(torch {r['torch']['torch_version']}); ours/torch = {r['ratio_vs_torch']:.3f}"
                 + (" (median of ABAB pairs, spread {:.2f}-{:.2f})".format(*r["ratio_spread"])
                    if "ratio_spread" in r else ""))
  return "\n".join(lines)


def read_results(paths: list[str]) -> list[dict]:
  """The JSON results (of this benchmark or of `llava_jax.bench.aot`) in `paths`, for `--table`."""
  if not paths:
    raise app.UsageError("--table: name the JSON result files to tabulate")
  results = []
  for path in paths:
    try:
      with open(path) as f:
        result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise app.UsageError(f"--table: cannot read result {path}: {e}") from e
    if not isinstance(result, dict):
      raise app.UsageError(f"--table: {path} holds a {type(result).__name__}, not a result object")
    results.append(result)
  return results


def main(argv):
  if FLAGS.table:
    print(format_table(read_results(argv[1:])))
    return
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.config is None:
    raise app.UsageError("--config is required (or --table)")
  compare = {"auto": None, "yes": True, "no": False}[FLAGS.torch]
  result = benchmark(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup, fill=FLAGS.fill,
                     images_per_row=FLAGS.images_per_row, loss_chunk=FLAGS.loss_chunk,
                     compare_torch=compare, name=FLAGS.name, data=FLAGS.data)
  out = FLAGS.out or os.path.join("bench_results", f"{result['name']}.json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(format_result(result))
  print(f"written       {out}")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
