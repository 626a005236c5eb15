r"""Ahead-of-time compile for a TPU slice with no TPU attached: memory fit, collectives, kernels.

  python -m llava_jax.bench.aot --config=configs/finetune.py:llava15_7b --topology=v5p-64 \
      --config.model.attention=splash --config.model.remat=full
  python -m llava_jax.bench.aot --config=configs/finetune.py:llava15_7b --topology=v5p-8 --target=generate

Needs libtpu (`pip install --target .libtpu "libtpu==0.0.42.*"`, the version jax 0.10.2's `[tpu]`
extra pins); `--libtpu` names the folder (default `.libtpu`, else an installed `libtpu`).
`--topology` takes gcloud accelerator-type names: v4-N and v5p-N (N TensorCores, N/2 chips),
v5litepod-N and v6e-N (N chips). `--target=train` compiles the loop's own jitted train step
(either stage, from the config); `--target=generate` compiles generation's prefill and decode loop.

Prints and writes JSON (`--out`): per-chip HBM (arguments, temporaries, total) against the chip's
capacity; the collectives in the HLO by kind; the Mosaic kernels (`tpu_custom_call`); compile
time; and XLA's cost-model time with the MFU it implies. The decoder's layers are compiled
unrolled (`scan_unroll = layers`) so no loop body is counted once; the micro-batch loop of
`grad_accum_steps` still is, so the estimate is scaled by it. All time/MFU figures are an
"XLA cost-model estimate" on the named topology, never a measurement.
"""

import collections
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str              # the topology prefix get_topology_desc takes
  hbm_bytes: int         # per chip
  peak_bf16_flops: float  # dense, per chip (data sheet)
  dims: int              # torus dimensions of a slice
  cores_per_unit: int    # gcloud's N counts TensorCores (2 per chip) or chips (1)


CHIPS = {  # gcloud accelerator-type prefix -> chip (Cloud TPU data sheets)
    "v4": Chip("v4", 32 * 2**30, 275e12, 3, 2),
    "v5p": Chip("v5p", 95 * 2**30, 459e12, 3, 2),
    "v5litepod": Chip("v5e", 16 * 2**30, 197e12, 2, 1),
    "v6e": Chip("v6e", 32 * 2**30, 918e12, 2, 1),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  chip: Chip
  chips: int
  shape: tuple[int, ...]

  @property
  def topology_name(self) -> str:
    return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"


def parse_slice(accelerator_type: str) -> Slice:
  """'v5p-64' -> 32 v5p chips in a 2x4x4 torus (the shapes gcloud gives those slices)."""
  match = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
  if not match:
    raise ValueError(f"--topology={accelerator_type!r}: expected v4-N, v5p-N, v5litepod-N or "
                     "v6e-N (gcloud accelerator types)")
  chip = CHIPS[match.group(1)]
  n = int(match.group(2))
  chips = n // chip.cores_per_unit
  if n % chip.cores_per_unit or chips < 1 or chips & (chips - 1):
    raise ValueError(f"--topology={accelerator_type!r}: {n} is not a power-of-two slice size")
  shape = [2, 2, 1] if chip.dims == 3 else [1, 1]
  if chip.dims == 3 and chips < 4:
    raise ValueError(f"--topology={accelerator_type!r}: {chip.name} slices have >= 4 chips")
  while math.prod(shape) < chips:  # double the smallest axis, the last of equals first
    smallest = min(shape)
    i = max(j for j, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return Slice(accelerator_type, chip, chips, tuple(shape))


def topology_devices(tpu_slice: Slice):
  """The slice's TPU devices, from libtpu, with no TPU attached (deviceless AOT)."""
  from jax.experimental import topologies
  chip_config = "megacore" if tpu_slice.chip.name == "v4" else "default"
  topo = topologies.get_topology_desc(platform="tpu", topology_name=tpu_slice.topology_name,
                                      chip_config_name=chip_config)
  return topo.devices


def use_libtpu(folder: str | None):
  """Makes libtpu importable for this process and quiets its host discovery (no TPU VM here)."""
  if folder and os.path.isdir(folder):
    sys.path.insert(0, os.path.abspath(folder))
  try:
    import libtpu  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f"libtpu not found ({folder or 'no --libtpu'} and not installed): "
                     'pip install --target .libtpu "libtpu==0.0.42.*"') from e
  # No metadata server or worker list on a CPU host; several compiling processes may share it.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")  # the host runs on CPU; TPU devices come from libtpu


def hlo_summary(hlo_text: str) -> dict:
  """Collectives by kind and Mosaic kernels (custom calls) in optimized HLO text."""
  kinds = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
  counts = collections.Counter()
  for kind in kinds:  # async pairs (x-start/x-done) count once, at their start
    counts[kind] = len(re.findall(rf"= [^=]*? {kind}(?:-start)?\(", hlo_text))
  kernels = re.findall(r'custom_call_target="tpu_custom_call"', hlo_text)
  names = re.findall(r'tpu_custom_call".*?op_name="([^"]+)"', hlo_text)
  return dict(collectives={k: v for k, v in counts.items() if v},
              mosaic_kernels=len(kernels), mosaic_kernel_names=sorted({n.split('/')[-1] for n in names}))


def memory_summary(compiled, tpu_slice: Slice) -> dict:
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return dict(argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
              alias_bytes=m.alias_size_in_bytes, temp_bytes=m.temp_size_in_bytes,
              total_bytes=total, capacity_bytes=tpu_slice.chip.hbm_bytes,
              fits=total <= tpu_slice.chip.hbm_bytes)


def _compile(jitted, *args, **static):
  start = time.perf_counter()
  lowered = jitted.lower(*args, **static)
  compiled = lowered.compile()
  return compiled, time.perf_counter() - start


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {k: float(cost[k]) for k in ("flops", "bytes accessed", "optimal_seconds") if k in cost}


def unrolled(config):
  """A copy of `config` with the decoder's layers unrolled, so cost analysis sees every layer."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.scan_unroll = config.model.llm.layers
  return config


def compile_train(config, tpu_slice: Slice, devices) -> dict:
  """The loop's jitted train step compiled for `devices` (abstract state and batch)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from llava_jax import sharding  # pylint: disable=g-import-not-at-top
  from llava_jax.bench import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from llava_jax.bench import train_step  # pylint: disable=g-import-not-at-top
  from llava_jax.config import schema  # pylint: disable=g-import-not-at-top
  config = unrolled(config)
  setup = train_step.setup_step(config, devices=devices)
  b, t = config.train.batch_size, config.data.max_len
  host = train_step.synthetic_batch(config.model, batch_size=1, seq_len=t,
                               images_per_row=config.data.max_images)
  batch_sharding = sharding.batch_sharding(setup.mesh)
  batch = {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype, sharding=batch_sharding)
           for k, v in host.items()}
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(setup.mesh))
  compiled, seconds = _compile(setup.jitted, setup.factory.abstract, batch, rng)
  parts = setup.parts
  step_flops = flops_lib.train_step_flops(
      config.model, batch_size=b, seq_len=t, images_per_row=config.data.max_images,
      image_tokens=schema.num_image_tokens(config.model), train_llm=parts["llm"],
      train_projector=parts["projector"], train_vision=parts["vision"]).total
  state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                    for x in jax.tree.leaves(setup.factory.abstract))
  result = dict(target="train", trained=[p for p, on in parts.items() if on],
                compile_time_s=seconds, model_flops_per_step=step_flops,
                state_bytes_total=state_bytes, memory=memory_summary(compiled, tpu_slice),
                **hlo_summary(compiled.as_text()))
  cost = _cost(compiled)
  if "optimal_seconds" in cost:
    # The micro-batch loop body is counted once: scale to the step.
    estimate = cost["optimal_seconds"] * config.train.grad_accum_steps
    cost["step_seconds"] = estimate
    cost["mfu"] = step_flops / estimate / (tpu_slice.chips * tpu_slice.chip.peak_bf16_flops)
  result["xla_cost_model_estimate"] = cost
  return result


def compile_generate(config, tpu_slice: Slice, devices, *, batch: int, prompt_len: int,
                     new_tokens: int) -> dict:
  """Generation's prefill and decode loop for `devices`, parameters sharded on the config's mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from llava_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from llava_jax import sharding  # pylint: disable=g-import-not-at-top
  from llava_jax.infer import generate  # pylint: disable=g-import-not-at-top
  from llava_jax.infer import sampling  # pylint: disable=g-import-not-at-top
  config = unrolled(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  module = model_lib.build(config.model, model_lib.platform_of(devices))
  size = config.model.vision.image_size
  pixels = jax.ShapeDtypeStruct((batch, config.data.max_images, size, size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32)
  boxed = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32),
                         jax.ShapeDtypeStruct((1, 1, size, size, 3), jnp.float32))["params"]
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        model_lib.unbox(boxed), sharding.logical_shardings(boxed, mesh))
  gen = generate.Generator(module, params, eos_ids=[-1], pad_id=0,
                           max_len=prompt_len + new_tokens, mesh=mesh)
  rows = sharding.batch_sharding(mesh)
  on_rows = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows)
  replicated = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x),
                                              sharding=sharding.replicated(mesh))
  sample_kw = jax.tree.map(on_rows, sampling.stack_params([sampling.SamplingParams()] * batch))
  lengths = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
  prefill, prefill_s = _compile(gen._start, params, on_rows(ids), on_rows(pixels), lengths,  # pylint: disable=protected-access
                                lengths, sample_kw, max_new=new_tokens)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       jax.eval_shape(functools.partial(gen._start, max_new=new_tokens),  # pylint: disable=protected-access
                                      params, ids, pixels, lengths, lengths, sample_kw),
                       prefill.output_shardings)
  decode, decode_s = _compile(gen._continue, params, state, replicated(jnp.int32(0)),  # pylint: disable=protected-access
                              on_rows(jax.ShapeDtypeStruct((batch,), jnp.bool_)), sample_kw)
  def summary(compiled, seconds):
    return dict(compile_time_s=seconds, memory=memory_summary(compiled, tpu_slice),
                xla_cost_model_estimate=_cost(compiled), **hlo_summary(compiled.as_text()))
  # The decode while-loop's body is counted once by the cost model: one token's step.
  return dict(target="generate", gen_batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
              prefill=summary(prefill, prefill_s), decode=summary(decode, decode_s))


def run(config, accelerator_type: str, *, target: str = "train", **generate_kw) -> dict:
  """Compiles `target` for the slice; the result dict main prints and writes."""
  tpu_slice = parse_slice(accelerator_type)
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  import jax  # pylint: disable=g-import-not-at-top

  from llava_jax.config import schema  # pylint: disable=g-import-not-at-top
  devices = topology_devices(tpu_slice)
  if target == "train":
    result = compile_train(config, tpu_slice, devices)
  elif target == "generate":
    result = compile_generate(config, tpu_slice, devices, **generate_kw)
  else:
    raise ValueError(f"--target={target!r}: expected 'train' or 'generate'")
  model_cfg = config.model
  return dict(
      topology=accelerator_type, topology_name=tpu_slice.topology_name, chips=tpu_slice.chips,
      device_kind=devices[0].device_kind, jax_version=jax.__version__, preset=model_cfg.preset,
      llm_layers=model_cfg.llm.layers,
      full_layers=schema.model_config(model_cfg.preset).llm.layers, dtype=model_cfg.dtype, remat=model_cfg.remat,
      attention=model_cfg.attention, mesh=dict(config.mesh),
      batch_size=config.train.batch_size, seq_len=config.data.max_len,
      grad_accum_steps=config.train.grad_accum_steps,
      loss_chunk_len=config.train.loss_chunk_len, mu_dtype=config.optim.mu_dtype,
      source=f"XLA cost-model estimate and memory analysis, AOT-compiled for {accelerator_type}",
      **result)


def _gib(n):
  return f"{n / 2**30:.2f} GiB"


def _setting(r: dict) -> tuple:
  """What identifies a recipe row apart from the compiled layer count."""
  return (r["preset"], r["topology"], r["attention"], r["remat"], r["batch_size"], r["seq_len"],
          r["grad_accum_steps"], r["loss_chunk_len"], r["mu_dtype"], str(r["mesh"]))


def scaled_to_full_depth(results: list[dict]) -> list[dict]:
  """Train results of one setting at two layer counts -> one row extrapolated to the preset's
  full depth (memory and estimated time are affine in the layer count); others pass as they are."""
  groups = collections.defaultdict(list)
  for r in results:
    if r["target"] == "train":
      groups[_setting(r)].append(r)
  rows = []
  for group in groups.values():
    group.sort(key=lambda r: r["llm_layers"])
    a, b = group[0], group[-1]
    full = a.get("full_layers", a["llm_layers"])  # results written before the field: as compiled
    if a["llm_layers"] == b["llm_layers"] or a["llm_layers"] == full:
      rows.append(dict(b, scaled_from=None))
      continue
    def at(va, vb, la=a["llm_layers"], lb=b["llm_layers"], full=full):
      return va + (vb - va) * (full - la) / (lb - la)
    total = at(a["memory"]["total_bytes"], b["memory"]["total_bytes"])
    seconds = at(a["xla_cost_model_estimate"]["step_seconds"],
                    b["xla_cost_model_estimate"]["step_seconds"])
    flops = at(a["model_flops_per_step"], b["model_flops_per_step"])
    peak = b["xla_cost_model_estimate"]["mfu"] * b["xla_cost_model_estimate"]["step_seconds"] / (
        b["model_flops_per_step"])  # 1 / (chips * peak)
    rows.append(dict(b, llm_layers=full, scaled_from=[a["llm_layers"], b["llm_layers"]],
                     memory=dict(b["memory"], total_bytes=total,
                                 fits=total <= b["memory"]["capacity_bytes"]),
                     xla_cost_model_estimate=dict(step_seconds=seconds,
                                                  mfu=flops / seconds * peak)))
  return rows


def format_table(results: list[dict]) -> str:
  """Markdown rows: preset, slice, settings, per-chip HBM, fits, XLA cost-model MFU."""
  header = ("preset", "slice", "attn", "remat", "batch x T", "accum", "L (from)",
            "HBM/chip GiB", "fits", "est. step s", "est. MFU")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in scaled_to_full_depth(results):
    cost, m = r["xla_cost_model_estimate"], r["memory"]
    layers = f"{r['llm_layers']}" + (f" ({r['scaled_from'][0]},{r['scaled_from'][1]})"
                                     if r["scaled_from"] else "")
    lines.append("| " + " | ".join([
        r["preset"], r["topology"], r["attention"], r["remat"],
        f"{r['batch_size']} x {r['seq_len']}", str(r["grad_accum_steps"]), layers,
        f"{m['total_bytes'] / 2**30:.1f} / {m['capacity_bytes'] / 2**30:.0f}",
        "yes" if m["fits"] else "no", f"{cost['step_seconds']:.2f}",
        f"{100 * cost['mfu']:.1f}%"]) + " |")
  return "\n".join(lines)


def format_result(r: dict) -> str:
  lines = [f"topology      {r['topology']} ({r['topology_name']}, {r['chips']} x "
           f"{r['device_kind']}), jax {r['jax_version']}",
           f"model         {r['preset']} L={r['llm_layers']} dtype={r['dtype']} remat={r['remat']}"
           f" attention={r['attention']} mesh={r['mesh']}",
           f"batch         {r['batch_size']} x {r['seq_len']} (grad_accum {r['grad_accum_steps']},"
           f" loss_chunk {r['loss_chunk_len']}, mu_dtype {r['mu_dtype']})"]
  phases = {"": r} if r["target"] == "train" else {f"{p} ": r[p] for p in ("prefill", "decode")}
  for label, p in phases.items():
    m, cost = p["memory"], p["xla_cost_model_estimate"]
    lines += [
        f"{label}HBM/chip  args {_gib(m['argument_bytes'])}, temps {_gib(m['temp_bytes'])}, "
        f"total {_gib(m['total_bytes'])} of {_gib(m['capacity_bytes'])}: "
        f"{'fits' if m['fits'] else 'DOES NOT FIT'}",
        f"{label}collectives {p['collectives'] or 'none'}",
        f"{label}Mosaic kernels {p['mosaic_kernels']} {p['mosaic_kernel_names']}",
        f"{label}compile   {p['compile_time_s']:.1f} s"]
    if "step_seconds" in cost:
      lines.append(f"{label}XLA cost-model estimate: step {cost['step_seconds'] * 1e3:.1f} ms, "
                   f"MFU {100 * cost['mfu']:.1f}%")
    elif "optimal_seconds" in cost:
      lines.append(f"{label}XLA cost-model estimate: {cost['optimal_seconds'] * 1e3:.2f} ms")
  return "\n".join(lines)


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Stage config file (`file.py:preset`).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "gcloud accelerator type: v4-N, v5p-N, v5litepod-N, "
                      "v6e-N.")
  flags.DEFINE_enum("target", "train", ["train", "generate"], "What to compile.")
  flags.DEFINE_string("libtpu", ".libtpu", "Folder holding libtpu (pip --target).")
  flags.DEFINE_integer("prompt_len", 1024, "generate: prompt tokens per row.")
  flags.DEFINE_integer("new_tokens", 256, "generate: tokens decoded per row.")
  flags.DEFINE_integer("gen_batch", 8, "generate: rows.")
  flags.DEFINE_string("out", None, "JSON path (default aot_results/PRESET_TOPOLOGY_TARGET.json).")
  flags.DEFINE_bool("table", False, "Print a Markdown table of the train results named as "
                    "arguments (one setting at two layer counts: extrapolated to full depth).")


def main(argv):
  if FLAGS.table:
    results = []
    for path in argv[1:]:
      with open(path) as f:
        results.append(json.load(f))
    print(format_table(results))
    return
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.config is None or FLAGS.topology is None:
    raise app.UsageError("--config and --topology are required")
  parse_slice(FLAGS.topology)  # a bad name fails before libtpu loads
  use_libtpu(FLAGS.libtpu)
  kw = {}
  if FLAGS.target == "generate":
    kw = dict(batch=FLAGS.gen_batch, prompt_len=FLAGS.prompt_len, new_tokens=FLAGS.new_tokens)
  result = run(FLAGS.config, FLAGS.topology, target=FLAGS.target, **kw)
  out = FLAGS.out or os.path.join(
      "aot_results", f"{result['preset']}_{FLAGS.topology}_{FLAGS.target}.json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(format_result(result))
  print(f"written       {out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
