r"""Full fine-tuning vs LoRA (bf16 base) vs QLoRA (int8 / NF4 base) at the same shapes.

  python -m llava_jax.bench.lora [--preset=demo] [--layers=N] [--batch=8] [--seq=192] [--steps=10]
  python -m llava_jax.bench.lora --preset=llava15_7b --layers=4 --topology=v5p:2x2x1  # TPU AOT

Per-device memory is XLA's analysis of the compiled train step (arguments = params + optimizer
state + batch, temporaries, outputs, less donated aliases). Without --topology the step also
runs on the local devices, the modes alternating step by step in one process, and the report
gives each mode's median step time and the median of its per-round ratio to LoRA (with the
spread), since timings on a loaded machine drift. With --topology the steps are only compiled,
for that TPU topology (needs libtpu importable: PYTHONPATH=/work/libtpu, TPU_ACCELERATOR_TYPE).
"""

import pathlib
import time

from absl import app
from absl import flags
import jax
import numpy as np

from llava_jax import sharding
from llava_jax.bench import train_step
from llava_jax.config import check as config_check
from llava_jax.config import schema

# The checkout's recipes, read by path as `llava_jax.main --config=FILE` reads them.
RECIPES = pathlib.Path(schema.RECIPE_DIR)

MODES = ("full", "lora_bf16", "qlora_int8", "qlora_nf4")
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("preset", "demo", "Recipe preset (configs/finetune*.py).")
  flags.DEFINE_integer("layers", 0, "Decoder layers (0 = the preset's).")
  flags.DEFINE_integer("batch", 8, "Global batch.")
  flags.DEFINE_integer("seq", 0, "Sequence length (0 = the preset's data.max_len).")
  flags.DEFINE_integer("steps", 10, "Timed rounds (each runs every mode once).")
  flags.DEFINE_string("topology", None, "Compile for this TPU topology only, e.g. v5p:2x2x1.")
  flags.DEFINE_list("modes", list(MODES), f"Modes to run, of {MODES} (timing needs lora_bf16).")


def mode_config(mode: str, preset: str, layers: int, batch: int, seq: int):
  """The recipe of `mode` at shared shapes; LoRA modes keep the base in bf16."""
  recipe = RECIPES / ("finetune.py" if mode == "full" else "finetune_lora.py")
  config = config_check.load_config_file(str(recipe)).get_config(preset)
  config.train.batch_size = batch
  if layers:
    config.model.llm.layers = layers
  if seq:
    config.data.max_len = seq
  config.init.params_from = config.init.projector_from = ""
  if mode != "full":
    config.lora.base_dtype = "bfloat16"
    config.lora.quant = mode.split("_")[1] if mode.startswith("qlora") else "none"
  return config


def compile_mode(config, devices):
  setup = train_step.setup_step(config, devices=devices)
  batch = train_step.synthetic_batch(config.model, batch_size=config.train.batch_size,
                                seq_len=config.data.max_len, images_per_row=1)
  batch_sharding = sharding.batch_sharding(setup.mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                    for k, v in batch.items()}
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(setup.mesh))
  compiled = setup.jitted.lower(setup.factory.abstract, abstract_batch, rng).compile()
  return setup, compiled, batch


def memory_row(mode, setup, compiled) -> dict:
  m = compiled.memory_analysis()
  gib = lambda n: n / 2**30
  return dict(mode=mode, trainable=setup.factory.num_trainable(),
              args_gib=gib(m.argument_size_in_bytes), temp_gib=gib(m.temp_size_in_bytes),
              total_gib=gib(m.argument_size_in_bytes + m.output_size_in_bytes
                            + m.temp_size_in_bytes - m.alias_size_in_bytes))


def time_modes(setups, steps: int) -> dict[str, tuple[float, float, float, float]]:
  """mode -> (median ms, median ratio to lora_bf16, ratio min, ratio max), modes alternating."""
  states = {}
  for mode, (setup, _compiled, batch, config) in setups.items():
    state = setup.factory.initial_state(config.init, jax.random.key(0))
    states[mode] = (state, sharding.global_batch(batch, setup.mesh))
  rng = jax.random.key(1)
  times = {mode: [] for mode in setups}
  for round_ in range(steps + 1):
    for mode, (setup, _, _, _) in setups.items():
      state, batch = states[mode]
      start = time.perf_counter()
      # The jitted step, not the AOT executable: it takes whatever layout XLA:CPU gave the
      # freshly made sub-byte (int4/uint4) arrays; the first round compiles.
      state, metrics = setup.jitted(state, batch, rng)
      jax.block_until_ready(metrics)
      if round_:   # the first round warms up
        times[mode].append(time.perf_counter() - start)
      states[mode] = (state, batch)
  ref = np.array(times["lora_bf16"])
  out = {}
  for mode, t in times.items():
    ratios = np.array(t) / ref
    out[mode] = (1e3 * float(np.median(t)), float(np.median(ratios)), float(ratios.min()),
                 float(ratios.max()))
  return out


def main(argv):
  del argv
  devices = None
  if FLAGS.topology:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    devices = topologies.get_topology_desc(platform="tpu", topology_name=FLAGS.topology).devices
  where = FLAGS.topology or f"{len(jax.devices())}x {jax.devices()[0].device_kind}"
  setups = {}
  print(f"preset {FLAGS.preset}, layers {FLAGS.layers or 'preset'}, batch {FLAGS.batch}, "
        f"seq {FLAGS.seq or 'preset'}, on {where}", flush=True)
  print("| mode | trainable params | per-device args GiB | temp GiB | total GiB |")
  print("|---|---|---|---|---|")
  for mode in FLAGS.modes:
    if mode not in MODES:
      raise ValueError(f"--modes: unknown {mode!r}; choose from {MODES}")
    start = time.perf_counter()
    config = mode_config(mode, FLAGS.preset, FLAGS.layers, FLAGS.batch, FLAGS.seq)
    setup, compiled, batch = compile_mode(config, devices)
    setups[mode] = (setup, compiled, batch, config)
    r = memory_row(mode, setup, compiled)
    print(f"| {mode} | {r['trainable']:,} | {r['args_gib']:.3f} | {r['temp_gib']:.3f} | "
          f"{r['total_gib']:.3f} | (compiled in {time.perf_counter() - start:.0f} s)", flush=True)
  if FLAGS.topology:
    return
  print("\n| mode | median step ms (CPU) | ratio to lora_bf16: median [min, max] |")
  print("|---|---|---|")
  for mode, (ms, ratio, lo, hi) in time_modes(setups, FLAGS.steps).items():
    print(f"| {mode} | {ms:.1f} | {ratio:.2f} [{lo:.2f}, {hi:.2f}] |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
