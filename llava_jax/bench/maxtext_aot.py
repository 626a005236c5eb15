r"""MaxText's own ahead-of-time train compile, run for a TPU slice and written as a `bench.aot` row.

  python -m llava_jax.bench.maxtext_aot --python=/path/to/maxtext-venv/bin/python \
      --topology=v5p-64 --model=llama2-7b --batch_size=128 --seq_len=2048 --attention=flash \
      --nounroll --out=aot_results/mt_7b_v5p-64_L32s_flash.json

MaxText (`pip install "maxtext[tpu]"`) needs Python >= 3.12 and a newer jax/libtpu than ours, so
it lives in its own virtualenv; `--python` names that venv's interpreter. This program runs
`maxtext.trainers.pre_train.train_compile` there (its `base.yml`, synthetic data, the slice's
chips under MaxText's default ZeRO-3 `ici_fsdp_parallelism=-1`), reads the memory and cost
analysis it prints, and writes a result `python -m llava_jax.bench.aot --table` puts beside ours.
Like ours, `--layers=1` and `2` (unrolled: `scan_layers=False`) give the XLA cost-model estimate
at full depth, and `--nounroll` at full depth gives the memory of the scanned step MaxText trains.
The model FLOPs behind its MFU are ours (`bench.flops`) for the same decoder shapes, so the two
MFUs compare as inverse step times. Compile times here include MaxText's start-up (~20 s).
"""

import ast
import json
import os
import re
import resource
import subprocess
import tempfile
import time
import types

from absl import app
from absl import flags

from llava_jax.bench import aot

FLAGS = flags.FLAGS

# MaxText model name -> (our preset with the same decoder shapes, MaxText's vocabulary).
MODELS = {"llama2-7b": ("llava15_7b", 32000), "llama2-13b": ("llava15_13b", 32000)}
# MaxText's attention names -> what its cost model sees (flash is the Mosaic splash kernel on TPU).
ATTENTIONS = ("dot_product", "flash")

_PROBE = """import importlib.metadata as m, json, os, maxtext
print(json.dumps(dict(site=os.path.dirname(maxtext.__file__),
                      **{p: m.version(p) for p in ("maxtext", "jax", "libtpu")})))"""


class MaxTextError(RuntimeError):
  pass


def maxtext_versions(python: str) -> dict:
  """{site: the maxtext package folder, maxtext, jax, libtpu: versions} of `python`'s venv."""
  proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=False)
  if proc.returncode:
    raise MaxTextError(f"--python={python}: cannot import maxtext there "
                       f"(pip install \"maxtext[tpu]\" in a Python >= 3.12 venv):\n"
                       f"{proc.stderr.strip()[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_command(python: str, site: str, tpu_slice: aot.Slice, *, model: str, batch_size: int,
                    seq_len: int, layers: int | None, unroll: bool, attention: str, remat: str,
                    workdir: str) -> list[str]:
  if batch_size % tpu_slice.chips:
    raise ValueError(f"--batch_size={batch_size}: not a multiple of {tpu_slice.chips} chips "
                     "(MaxText takes a per-device batch)")
  argv = [python, "-m", "maxtext.trainers.pre_train.train_compile",
          os.path.join(site, "configs", "base.yml"),
          f"compile_topology={tpu_slice.accelerator_type}", "compile_topology_num_slices=1",
          f"model_name={model}", f"per_device_batch_size={batch_size // tpu_slice.chips}",
          f"max_target_length={seq_len}", f"remat_policy={remat}", f"attention={attention}",
          f"scan_layers={not unroll}", f"base_output_directory={workdir}", "run_name=aot",
          "dataset_type=synthetic"]
  if unroll:  # as ours: no windowed-einsum loops to hide matmuls from the cost model
    argv.append("compile_xla_flags=" + " ".join(
        f"--{k}={v}" for k, v in aot.ESTIMATE_COMPILER_OPTIONS.items()))
  if layers is not None:
    argv += ["override_model_config=True", f"base_num_decoder_layers={layers}"]
  return argv


def parse_output(text: str) -> tuple[dict, dict, int]:
  """(memory stats, cost analysis, decoder layers) from train_compile's printed output."""
  if "Finished train_compile.py successfully!" not in text:
    oom = re.search(r"RESOURCE_EXHAUSTED[^\n]*", text)
    raise MaxTextError("MaxText's train_compile failed: "
                       + (oom.group(0) if oom else text.strip()[-3000:]))
  memory = re.search(r"Memory analysis: CompiledMemoryStats\(([^)]*)\)", text)
  cost = re.search(r"Cost analysis: (\{.*\})", text)
  layers = re.search(r"Config param num_decoder_layers: (\d+)", text)
  if not (memory and cost and layers):
    raise MaxTextError("train_compile's output has no memory analysis, cost analysis or "
                       "num_decoder_layers line (MaxText changed its printing?)")
  stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", memory.group(1))}
  costs = ast.literal_eval(cost.group(1))
  wanted = ("flops", "bytes accessed", "optimal_seconds")
  return stats, {k: float(costs[k]) for k in wanted if k in costs}, int(layers.group(1))


def step_flops(model: str, *, layers: int, batch_size: int, seq_len: int) -> float:
  """Model FLOPs of one step of MaxText's decoder-only model, by our formula (bench.flops)."""
  from llava_jax.bench import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from llava_jax.config import schema  # pylint: disable=g-import-not-at-top
  preset, vocab = MODELS[model]
  cfg = schema.model_config(preset)
  cfg.llm.layers, cfg.llm.vocab_size = layers, vocab
  return flops_lib.train_step_flops(cfg, batch_size=batch_size, seq_len=seq_len, images_per_row=0,
                                    image_tokens=0, train_llm=True, train_projector=False).total


def run(python: str, accelerator_type: str, *, model: str = "llama2-7b", batch_size: int = 128,
        seq_len: int = 2048, layers: int | None = None, unroll: bool = True,
        attention: str = "dot_product", remat: str = "full") -> dict:
  """Compiles MaxText's train step for the slice; a result shaped like `bench.aot.run`'s."""
  if model not in MODELS:
    raise ValueError(f"--model={model!r}: expected one of {sorted(MODELS)}")
  if attention not in ATTENTIONS:
    raise ValueError(f"--attention={attention!r}: expected one of {ATTENTIONS}")
  tpu_slice = aot.parse_slice(accelerator_type)
  versions = maxtext_versions(python)
  env = dict(os.environ, TPU_ACCELERATOR_TYPE=accelerator_type, TPU_SKIP_MDS_QUERY="1",
             TPU_WORKER_HOSTNAMES="localhost")
  with tempfile.TemporaryDirectory() as workdir:
    argv = compile_command(python, versions["site"], tpu_slice, model=model,
                           batch_size=batch_size, seq_len=seq_len, layers=layers, unroll=unroll,
                           attention=attention, remat=remat, workdir=workdir)
    cpu_start = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
  stats, cost, compiled_layers = parse_output(proc.stdout + proc.stderr)
  flops = step_flops(model, layers=compiled_layers, batch_size=batch_size, seq_len=seq_len)
  if unroll and "optimal_seconds" in cost:
    cost["step_seconds"] = cost["optimal_seconds"]
    cost["mfu"] = flops / cost["step_seconds"] / (tpu_slice.chips * tpu_slice.chip.peak_bf16_flops)
  if "flops" in cost:
    cost["xla_flops_per_model_flop"] = cost["flops"] * tpu_slice.chips / flops
  preset = MODELS[model][0]
  from llava_jax.config import schema  # pylint: disable=g-import-not-at-top
  return dict(
      target="train", topology=accelerator_type, topology_name=tpu_slice.topology_name,
      chips=tpu_slice.chips, device_kind=tpu_slice.chip.name, jax_version=versions["jax"],
      maxtext_version=versions["maxtext"], libtpu_version=versions["libtpu"],
      preset=f"maxtext {model}", llm_layers=compiled_layers,
      full_layers=schema.model_config(preset).llm.layers, dtype="bfloat16", remat=remat,
      attention=attention, mesh=dict(data=1, fsdp=tpu_slice.chips, tensor=1),
      batch_size=batch_size, seq_len=seq_len, images_per_row=0, grad_accum_steps=1,
      loss_chunk_len=0, mu_dtype="float32", unrolled=unroll, trained=["llm"],
      compiler_options=aot.ESTIMATE_COMPILER_OPTIONS if unroll else {},
      compile_time_s=wall,
      compile_cpu_s=(cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime),
      compile_time_includes_startup=True, model_flops_per_step=flops,
      memory=aot.memory_summary(types.SimpleNamespace(**stats), tpu_slice),
      xla_cost_model_estimate=cost, command=" ".join(argv[1:]),
      source=(f"XLA cost-model estimate and memory analysis from MaxText {versions['maxtext']}'s "
              f"train_compile (jax {versions['jax']}, libtpu {versions['libtpu']}), "
              f"AOT-compiled for {accelerator_type}"))


def define_flags():
  flags.DEFINE_string("python", None, "The interpreter of a virtualenv with maxtext[tpu].")
  flags.DEFINE_string("topology", None, "gcloud accelerator type: v4-N, v5p-N, v5litepod-N, "
                      "v6e-N.")
  flags.DEFINE_enum("model", "llama2-7b", sorted(MODELS), "MaxText model_name.")
  flags.DEFINE_integer("batch_size", 128, "Global batch (rows); a multiple of the chips.")
  flags.DEFINE_integer("seq_len", 2048, "Tokens per row (max_target_length).")
  flags.DEFINE_integer("layers", None, "Decoder layers (default: the model's).")
  flags.DEFINE_bool("unroll", True, "scan_layers=False, so the cost model sees every layer; "
                    "--nounroll compiles the scanned step MaxText trains.")
  flags.DEFINE_enum("attention", "dot_product", list(ATTENTIONS), "MaxText attention.")
  flags.DEFINE_string("remat", "full", "MaxText remat_policy.")
  flags.DEFINE_string("out", None, "JSON path.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not (FLAGS.python and FLAGS.topology and FLAGS.out):
    raise app.UsageError("--python, --topology and --out are required")
  try:
    result = run(FLAGS.python, FLAGS.topology, model=FLAGS.model, batch_size=FLAGS.batch_size,
                 seq_len=FLAGS.seq_len, layers=FLAGS.layers, unroll=FLAGS.unroll,
                 attention=FLAGS.attention, remat=FLAGS.remat)
  except (MaxTextError, ValueError) as e:
    raise SystemExit(f"maxtext_aot: {e}") from None
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=1)
  m, cost = result["memory"], result["xla_cost_model_estimate"]
  print(f"MaxText {result['maxtext_version']} {FLAGS.model} L={result['llm_layers']} on "
        f"{FLAGS.topology}: HBM/chip args {m['argument_bytes'] / 2**30:.2f} GiB, temps "
        f"{m['temp_bytes'] / 2**30:.2f} GiB, total {m['total_bytes'] / 2**30:.2f} GiB; compile "
        f"{result['compile_time_s']:.0f} s wall")
  if "mfu" in cost:
    print(f"XLA cost-model estimate: step {cost['step_seconds'] * 1e3:.1f} ms, "
          f"MFU {100 * cost['mfu']:.1f}%")
  print(f"written {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
