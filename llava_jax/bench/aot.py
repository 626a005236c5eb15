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
time (wall and CPU); and XLA's cost-model time with the MFU it implies. `--nounroll` compiles the
scanned step TPU training runs (its real memory at full depth, in a compile whose cost hardly
grows with depth; no time estimate). By default the decoder's layers are compiled
unrolled (`scan_unroll = layers`) so no loop body is counted once, and without XLA's windowed
einsum (`ESTIMATE_COMPILER_OPTIONS`), whose collective-matmul loops would hide FSDP's
weight-gradient matmuls; the micro-batch loop of `grad_accum_steps` is still counted once, so the
estimate is scaled by it, and XLA's FLOPs are checked against the model's. All time/MFU figures are an
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


def memory_summary(m, tpu_slice: Slice) -> dict:
  """Per-chip HBM from XLA's memory analysis (`compiled.memory_analysis()`) against capacity."""
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return dict(argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
              alias_bytes=m.alias_size_in_bytes, temp_bytes=m.temp_size_in_bytes,
              total_bytes=total, capacity_bytes=tpu_slice.chip.hbm_bytes,
              fits=total <= tpu_slice.chip.hbm_bytes)


# The compiler options of the compiles that give the XLA cost-model estimate. XLA's SPMD pass
# turns FSDP's weight-gradient matmuls (and their reduce-scatters) into windowed "collective
# matmul" while-loops, whose bodies the cost model counts once: with them its FLOPs fell to 0.74x
# of the model's (7B stage 2, v5p-64) and the time it estimated was too short. Without them every
# matmul is counted, and the collectives are costed unoverlapped: the estimate errs slow.
ESTIMATE_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_reduce_scatter": "false",
                             "xla_tpu_enable_windowed_einsum_for_all_gather": "false"}


def _compile(jitted, *args, compiler_options=None, **static):
  """(compiled, {wall seconds of lowering + compiling, of lowering alone, CPU seconds of both}).

  The CPU seconds (all threads) hardly depend on how loaded a shared host is; wall time does."""
  start, cpu_start = time.perf_counter(), time.process_time()
  lowered = jitted.lower(*args, **static)
  lowered_at = time.perf_counter()
  compiled = lowered.compile(compiler_options=compiler_options or {})
  return compiled, dict(compile_time_s=time.perf_counter() - start,
                        lower_time_s=lowered_at - start,
                        compile_cpu_s=time.process_time() - cpu_start)


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


def compile_train(config, tpu_slice: Slice, devices, *, unroll: bool = True) -> dict:
  """The loop's jitted train step compiled for `devices` (abstract state and batch).

  `unroll`: the decoder's layers unrolled, so XLA's cost model sees each (its time estimate and
  MFU are then a step's); False compiles the scanned loop the trainer runs on TPU, whose memory
  is the real program's and whose compile time hardly grows with depth, but whose cost model
  counts one layer (no estimate is given).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from llava_jax import sharding  # pylint: disable=g-import-not-at-top
  from llava_jax.bench import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from llava_jax.bench import train_step  # pylint: disable=g-import-not-at-top
  from llava_jax.config import schema  # pylint: disable=g-import-not-at-top
  if unroll:
    config = unrolled(config)
  setup = train_step.setup_step(config, devices=devices)
  b, t = config.train.batch_size, config.data.max_len
  host = train_step.synthetic_batch(config.model, batch_size=1, seq_len=t,
                               images_per_row=config.data.max_images)
  batch_sharding = sharding.batch_sharding(setup.mesh)
  batch = {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype, sharding=batch_sharding)
           for k, v in host.items()}
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(setup.mesh))
  options = ESTIMATE_COMPILER_OPTIONS if unroll else {}
  compiled, times = _compile(setup.jitted, setup.factory.abstract, batch, rng,
                             compiler_options=options)
  parts = setup.parts
  step_flops = flops_lib.train_step_flops(
      config.model, batch_size=b, seq_len=t, images_per_row=config.data.max_images,
      image_tokens=schema.num_image_tokens(config.model), train_llm=parts["llm"],
      train_projector=parts["projector"], train_vision=parts["vision"]).total
  state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                    for x in jax.tree.leaves(setup.factory.abstract))
  result = dict(target="train", unrolled=unroll, compiler_options=options,
                trained=[p for p, on in parts.items() if on],
                **times, model_flops_per_step=step_flops,
                state_bytes_total=state_bytes, memory=memory_summary(compiled.memory_analysis(), tpu_slice),
                **hlo_summary(compiled.as_text()))
  cost = _cost(compiled)
  if cost.get("optimal_seconds", 0) <= 0 and unroll:
    # libtpu 0.0.42 answers a negative time for v4 and v5e: it has no cost model for them.
    cost["no_estimate"] = f"XLA's cost model returned {cost.get('optimal_seconds')} s"
  elif unroll:
    # The micro-batch loop body is counted once: scale to the step.
    estimate = cost["optimal_seconds"] * config.train.grad_accum_steps
    cost["step_seconds"] = estimate
    cost["mfu"] = step_flops / estimate / (tpu_slice.chips * tpu_slice.chip.peak_bf16_flops)
  if "flops" in cost:  # below 1, a loop the cost model counted once hides work
    cost["xla_flops_per_model_flop"] = (cost["flops"] * config.train.grad_accum_steps
                                        * tpu_slice.chips / step_flops)
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
  prefill, prefill_times = _compile(gen.start, params, on_rows(ids), on_rows(pixels), lengths,
                                lengths, sample_kw, max_new=new_tokens)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       jax.eval_shape(functools.partial(gen.start, max_new=new_tokens),
                                      params, ids, pixels, lengths, lengths, sample_kw),
                       prefill.output_shardings)
  decode, decode_times = _compile(gen.decode_until, params, state, replicated(jnp.int32(0)),
                              on_rows(jax.ShapeDtypeStruct((batch,), jnp.bool_)), sample_kw)
  def summary(compiled, times):
    return dict(**times, memory=memory_summary(compiled.memory_analysis(), tpu_slice),
                xla_cost_model_estimate=_cost(compiled), **hlo_summary(compiled.as_text()))
  # The decode while-loop's body is counted once by the cost model: one token's step.
  return dict(target="generate", gen_batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
              prefill=summary(prefill, prefill_times), decode=summary(decode, decode_times))


def run(config, accelerator_type: str, *, target: str = "train", unroll: bool = True,
        **generate_kw) -> dict:
  """Compiles `target` for the slice; the result dict main prints and writes."""
  tpu_slice = parse_slice(accelerator_type)
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
  import jax  # pylint: disable=g-import-not-at-top

  from llava_jax.config import schema  # pylint: disable=g-import-not-at-top
  devices = topology_devices(tpu_slice)
  if target == "train":
    result = compile_train(config, tpu_slice, devices, unroll=unroll)
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
      images_per_row=config.data.max_images, grad_accum_steps=config.train.grad_accum_steps,
      loss_chunk_len=config.train.loss_chunk_len, mu_dtype=config.optim.mu_dtype,
      source=f"XLA cost-model estimate and memory analysis, AOT-compiled for {accelerator_type}",
      **result)


def _gib(n):
  return f"{n / 2**30:.2f} GiB"


def _setting(r: dict) -> tuple:
  """What identifies a recipe row apart from the compiled layer count and unrolling."""
  return (r["preset"], tuple(r.get("trained", ())), r["topology"], r["attention"], r["remat"],
          r["batch_size"], r["seq_len"], r.get("images_per_row", 1), r["grad_accum_steps"],
          r["loss_chunk_len"], r["mu_dtype"], str(r["mesh"]))


def _affine(points: list[tuple[int, float]], layers: int) -> float:
  """The value at `layers` of the line through the first two (layer count, value) points."""
  (la, va), (lb, vb) = points[:2]
  return va + (vb - va) * (layers - la) / (lb - la)


def _memory_at_depth(group: list[dict], full: int) -> dict:
  """Per-chip memory at full depth: a full-depth compile (the scanned one first) if there is one,
  else the line through the two smallest layer counts, checked against a third if compiled.
  Estimate compiles (their compiler options change the program) count only if nothing else does."""
  as_trained = [r for r in group if not r.get("compiler_options")]
  if not as_trained:
    memory = _memory_at_depth([dict(r, compiler_options={}) for r in group], full)
    memory["source"] += " (estimate compiles, windowed einsum off: not the trained program)"
    memory["trained_program"] = False   # its fit says nothing about training's
    return memory
  group = as_trained
  by_layers = sorted({r["llm_layers"]: r for r in group}.values(), key=lambda r: r["llm_layers"])
  at_full = [r for r in group if r["llm_layers"] == full]
  if at_full:
    r = min(at_full, key=lambda r: r.get("unrolled", True))
    memory = dict(r["memory"], source=f"compiled at L={full} "
                  + ("(unrolled)" if r.get("unrolled", True) else "(scanned, as trained)"))
    cut = [c for c in by_layers if c["llm_layers"] != full]
    if len(cut) >= 2:  # the line through two cut depths, checked at full depth
      predicted = _affine([(c["llm_layers"], c["memory"]["total_bytes"]) for c in cut], full)
      memory["source"] += (f"; the L={cut[0]['llm_layers']},{cut[1]['llm_layers']} line "
                           f"predicts {100 * (predicted / r['memory']['total_bytes'] - 1):+.1f}%")
    return memory
  if len(by_layers) < 2:
    r = by_layers[0]
    return dict(r["memory"], source=f"compiled at L={r['llm_layers']} only (not scaled)")
  fields = ("argument_bytes", "temp_bytes", "total_bytes")
  memory = dict(by_layers[-1]["memory"])
  for k in fields:
    memory[k] = _affine([(r["llm_layers"], r["memory"][k]) for r in by_layers], full)
  memory["fits"] = memory["total_bytes"] <= memory["capacity_bytes"]
  a, b = by_layers[0]["llm_layers"], by_layers[1]["llm_layers"]
  memory["source"] = f"linear in L from L={a},{b}"
  if len(by_layers) > 2:  # the line's error at a third compiled count
    c = by_layers[-1]
    predicted = _affine([(r["llm_layers"], r["memory"]["total_bytes"]) for r in by_layers],
                        c["llm_layers"])
    memory["check"] = dict(layers=c["llm_layers"], predicted_total_bytes=predicted,
                           compiled_total_bytes=c["memory"]["total_bytes"])
    memory["source"] += (f"; at L={c['llm_layers']} it predicts "
                         f"{100 * (predicted / c['memory']['total_bytes'] - 1):+.1f}%")
  return memory


def _estimate_at_depth(group: list[dict], full: int) -> dict | None:
  """XLA's step-time estimate and MFU at full depth from unrolled compiles (None without them)."""
  unrolled_runs = [r for r in group if r.get("unrolled", True)]
  by_layers = sorted({r["llm_layers"]: r for r in unrolled_runs
                      if r["xla_cost_model_estimate"].get("step_seconds", 0) > 0}.values(),
                     key=lambda r: r["llm_layers"])
  if not by_layers:
    negative = [r for r in unrolled_runs
                if r["xla_cost_model_estimate"].get("optimal_seconds", 1) <= 0]
    if negative:  # libtpu 0.0.42 on v4 and v5e
      return dict(source=f"none: XLA's cost model gives a negative time for "
                  f"{negative[0].get('device_kind', 'this chip')}")
    return None
  last = by_layers[-1]
  est = last["xla_cost_model_estimate"]
  inv_peak = est["mfu"] * est["step_seconds"] / last["model_flops_per_step"]  # 1/(chips*peak)
  if last["llm_layers"] == full:
    return dict(step_seconds=est["step_seconds"], mfu=est["mfu"], source=f"unrolled L={full}")
  if len(by_layers) < 2:
    return dict(step_seconds=est["step_seconds"], mfu=est["mfu"],
                source=f"unrolled L={last['llm_layers']} only (not scaled)")
  seconds = _affine([(r["llm_layers"], r["xla_cost_model_estimate"]["step_seconds"])
                     for r in by_layers], full)
  flops = _affine([(r["llm_layers"], r["model_flops_per_step"]) for r in by_layers], full)
  a, b = by_layers[0]["llm_layers"], by_layers[1]["llm_layers"]
  estimate = dict(step_seconds=seconds, mfu=flops / seconds * inv_peak,
                  source=f"unrolled L={a},{b}, linear in L")
  ratios = [r["xla_cost_model_estimate"].get("xla_flops_per_model_flop") for r in by_layers]
  if None in ratios:
    estimate["source"] += "; XLA's FLOPs not checked"
  elif min(ratios) < 1:
    estimate["source"] += (f"; **XLA counted only {min(ratios):.2f}x the model FLOPs**: "
                           "loops hide work, the estimate is too fast")
  if len(by_layers) > 2:  # the line's error at a third compiled count
    predicted = _affine([(r["llm_layers"], r["xla_cost_model_estimate"]["step_seconds"])
                         for r in by_layers], last["llm_layers"])
    estimate["source"] += (f"; at L={last['llm_layers']} it predicts "
                           f"{100 * (predicted / est['step_seconds'] - 1):+.1f}%")
  return estimate


def recipe_rows(results: list[dict]) -> list[dict]:
  """Train results grouped by setting -> one row per setting at the preset's full depth: memory
  from a full-depth compile or a line through two layer counts, XLA's estimate from unrolled
  compiles, and the compile times of everything the row used."""
  groups = collections.defaultdict(list)
  for r in results:
    if r["target"] == "train":
      groups[_setting(r)].append(r)
  rows = []
  for group in groups.values():
    first = group[0]
    full = first.get("full_layers", first["llm_layers"])  # older results: as compiled
    rows.append(dict(
        first, llm_layers=full, memory=_memory_at_depth(group, full),
        xla_cost_model_estimate=_estimate_at_depth(group, full),
        compiles=sorted(((r["llm_layers"], r.get("unrolled", True), r["compile_time_s"],
                          r.get("compile_cpu_s")) for r in group), key=lambda c: c[:2])))
  return rows


def _stage(r: dict) -> str:
  trained = set(r.get("trained", ()))
  return "2" if "llm" in trained else "1" if trained == {"projector"} else "+".join(sorted(trained))


# Attention that compiles to a Mosaic kernel, which XLA's cost model does not cost (MaxText's
# `flash` is the same splash kernel).
UNCOSTED_ATTENTION = ("splash", "flash")


def _model_label(r: dict) -> str:
  """The preset, marked when the rows held no images (the decoder alone ran: max_images=0)."""
  return r["preset"] + (" (text only)" if r.get("images_per_row") == 0 else "")


def format_table(results: list[dict]) -> str:
  """Markdown rows: preset, stage, slice, settings, per-chip HBM, fits, XLA cost-model MFU (not
  for splash rows: the cost model does not cost Mosaic kernels), compile times, sources."""
  header = ("preset", "stage", "slice", "attn", "mesh d,f,t", "batch x T (accum)", "args GiB", "temps GiB",
            "total / HBM GiB", "fits", "memory from", "est. MFU",
            "compiles: L, wall s (CPU s)")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  order = lambda r: (r["preset"], _stage(r), r["topology"], r["attention"], r["grad_accum_steps"])
  for r in sorted(recipe_rows(results), key=order):
    m, est = r["memory"], r["xla_cost_model_estimate"]
    if est is None:
      mfu = "-"
    elif "mfu" not in est:
      mfu = est["source"]
    elif r["attention"] in UNCOSTED_ATTENTION:
      mfu = f"n/c ({r['attention']} not costed)"
    else:
      mfu = f"{100 * est['mfu']:.1f}% ({est['source']})"
    compiles = ", ".join(f"{layers}{'u' if unrolled else 's'} {wall:.0f}"
                         + (f" ({cpu:.0f} CPU)" if cpu else "")
                         for layers, unrolled, wall, cpu in r["compiles"])
    lines.append("| " + " | ".join([
        _model_label(r), _stage(r), r["topology"], r["attention"],
        ",".join(str(r["mesh"].get(k, "?")) for k in ("data", "fsdp", "tensor")),
        f"{r['batch_size']} x {r['seq_len']} ({r['grad_accum_steps']})"
        + (f", loss chunk {r['loss_chunk_len']}" if r.get("loss_chunk_len") else ""),
        f"{m['argument_bytes'] / 2**30:.2f}", f"{m['temp_bytes'] / 2**30:.2f}",
        f"{m['total_bytes'] / 2**30:.1f} / {m['capacity_bytes'] / 2**30:.0f}",
        "-" if not m.get("trained_program", True) else "yes" if m["fits"] else "**no**",
        m["source"], mfu, compiles]) + " |")
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
        f"{label}compile   {p['compile_time_s']:.1f} s wall"
        + (f", {p['compile_cpu_s']:.0f} s CPU" if "compile_cpu_s" in p else "")]
    if "step_seconds" in cost:
      lines.append(f"{label}XLA cost-model estimate: step {cost['step_seconds'] * 1e3:.1f} ms, "
                   f"MFU {100 * cost['mfu']:.1f}%")
    elif r["target"] == "train":
      lines.append("XLA cost-model estimate: none (scanned layers; the loop body counts once)")
    elif "optimal_seconds" in cost:
      lines.append(f"{label}XLA cost-model estimate: {cost['optimal_seconds'] * 1e3:.2f} ms")
  return "\n".join(lines)


def define_flags():
  config_flags.DEFINE_config_file("config", None, "Stage config file (`file.py:preset`).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "gcloud accelerator type: v4-N, v5p-N, v5litepod-N, "
                      "v6e-N.")
  flags.DEFINE_enum("target", "train", ["train", "generate"], "What to compile.")
  flags.DEFINE_string("libtpu", ".libtpu", "Folder holding libtpu (pip --target).")
  flags.DEFINE_bool("unroll", True, "train: unroll the decoder's layers so the XLA cost-model "
                    "estimate covers them all; --nounroll compiles the scanned loop TPU training "
                    "runs (its real memory, fast to compile at full depth, no time estimate).")
  flags.DEFINE_integer("prompt_len", 1024, "generate: prompt tokens per row.")
  flags.DEFINE_integer("new_tokens", 256, "generate: tokens decoded per row.")
  flags.DEFINE_integer("gen_batch", 8, "generate: rows.")
  flags.DEFINE_string("out", None, "JSON path (default aot_results/PRESET_TOPOLOGY_TARGET.json).")
  flags.DEFINE_bool("table", False, "Print a Markdown table of the train results named as "
                    "arguments (one setting at two layer counts: extrapolated to full depth).")


def main(argv):
  if FLAGS.table:
    from llava_jax.bench import train_step  # pylint: disable=g-import-not-at-top
    print(format_table(train_step.read_results(argv[1:])))
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
  result = run(FLAGS.config, FLAGS.topology, target=FLAGS.target, unroll=FLAGS.unroll, **kw)
  out = FLAGS.out or os.path.join(
      "aot_results", f"{result['preset']}_{FLAGS.topology}_{FLAGS.target}.json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(format_result(result))
  print(f"written       {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
