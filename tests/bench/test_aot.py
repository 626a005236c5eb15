"""llava_jax.bench.aot: train steps compiled for TPU slices with libtpu, no TPU attached.

libtpu is found in `.libtpu/` at the repository root (`.ci/run` installs it there with
`pip install --target .libtpu "libtpu==0.0.42.*"`) or in $LLAVA_JAX_LIBTPU. Each compile runs in
a subprocess with libtpu on its own PYTHONPATH, so this test process (and the rest of the suite)
never loads it.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest

from llava_jax.bench import aot
import tiny

_ROOT = tiny.REPO
LIBTPU = pathlib.Path(os.environ.get("LLAVA_JAX_LIBTPU", _ROOT / ".libtpu"))


def compile_for(topology: str, config: str, *overrides: str) -> dict:
  """Runs `python -m llava_jax.bench.aot` for `topology` in a subprocess; its JSON result."""
  if not (LIBTPU / "libtpu").is_dir():
    raise AssertionError(f"libtpu not found in {LIBTPU}: "
                         'pip install --target .libtpu "libtpu==0.0.42.*"')
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LIBTPU), str(_ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-m", "llava_jax.bench.aot", f"--config={config}", f"--topology={topology}",
         f"--libtpu={LIBTPU}", f"--out={out}", *overrides],
        check=False, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
      raise AssertionError(f"aot failed:\n{proc.stderr[-4000:]}")
    with open(out) as f:
      return json.load(f)


class SliceNamesTest(absltest.TestCase):

  def test_gcloud_names_map_to_topologies(self):
    for name, topology, chips in (("v5p-8", "v5p:2x2x1", 4), ("v5p-64", "v5p:2x4x4", 32),
                                  ("v4-64", "v4:2x4x4", 32), ("v4-8", "v4:2x2x1", 4),
                                  ("v5litepod-256", "v5e:16x16", 256),
                                  ("v5litepod-8", "v5e:2x4", 8), ("v6e-64", "v6e:8x8", 64)):
      tpu_slice = aot.parse_slice(name)
      self.assertEqual((tpu_slice.topology_name, tpu_slice.chips), (topology, chips), name)

  def test_bad_names_are_refused(self):
    for name in ("v5p", "v5p-12", "v3-8", "v5p-2"):
      with self.assertRaisesRegex(ValueError, "--topology"):
        aot.parse_slice(name)


class TableTest(absltest.TestCase):

  @staticmethod
  def result(layers, total_gib, seconds, *, attention="xla", unrolled=True):
    flops = 1e15 * layers
    memory = dict(argument_bytes=total_gib / 4 * 2**30, temp_bytes=total_gib * 3 / 4 * 2**30,
                  total_bytes=total_gib * 2**30, capacity_bytes=95 * 2**30, fits=True)
    estimate = dict(step_seconds=seconds, mfu=flops / seconds / (4 * 459e12)) if unrolled else {}
    return dict(target="train", trained=["projector", "llm"], unrolled=unrolled, preset="p",
                topology="v5p-8", attention=attention, remat="full", batch_size=8, seq_len=2048,
                grad_accum_steps=1, loss_chunk_len=0, mu_dtype="float32",
                mesh=dict(data=1, fsdp=-1, tensor=1),
                llm_layers=layers, full_layers=32, model_flops_per_step=flops, memory=memory,
                xla_cost_model_estimate=estimate, compile_time_s=10.0 * layers)

  def test_two_layer_counts_extrapolate_to_full_depth(self):
    (row,) = aot.recipe_rows([self.result(1, 2.0, 0.5), self.result(2, 3.0, 1.0)])
    self.assertEqual(row["llm_layers"], 32)
    self.assertAlmostEqual(row["memory"]["total_bytes"], 33.0 * 2**30)   # 2 + 31 x 1 GiB
    self.assertAlmostEqual(row["memory"]["argument_bytes"], 33.0 / 4 * 2**30)
    self.assertIn("L=1,2", row["memory"]["source"])
    self.assertAlmostEqual(row["xla_cost_model_estimate"]["step_seconds"], 16.0)
    self.assertAlmostEqual(row["xla_cost_model_estimate"]["mfu"], 32e15 / 16.0 / (4 * 459e12))
    self.assertEqual([c[0] for c in row["compiles"]], [1, 2])

  def test_a_third_layer_count_checks_the_line(self):
    (row,) = aot.recipe_rows([self.result(1, 2.0, 0.5), self.result(2, 3.0, 1.0),
                              self.result(4, 5.5, 2.0)])
    self.assertAlmostEqual(row["memory"]["total_bytes"], 33.0 * 2**30)   # from L=1,2 only
    self.assertEqual(row["memory"]["check"]["layers"], 4)
    self.assertIn("at L=4 it predicts -9.1%", row["memory"]["source"])   # 5.0 vs 5.5
    self.assertIn("at L=4 it predicts +0.0%", row["xla_cost_model_estimate"]["source"])

  def test_scanned_full_depth_memory_wins_and_splash_has_no_mfu(self):
    rows = [self.result(1, 2.0, 0.5, attention="splash"),
            self.result(2, 3.0, 1.0, attention="splash"),
            self.result(32, 30.0, 0.0, attention="splash", unrolled=False)]
    (row,) = aot.recipe_rows(rows)
    self.assertAlmostEqual(row["memory"]["total_bytes"], 30.0 * 2**30)
    self.assertIn("scanned", row["memory"]["source"])
    self.assertIn("the L=1,2 line predicts +10.0%", row["memory"]["source"])   # 33 vs 30 GiB
    table = aot.format_table(rows)
    self.assertIn("| p | 2 | v5p-8 | splash | 1,-1,1 |", table)
    self.assertIn("n/c (splash not costed)", table)
    self.assertIn("| 30.0 / 95 | yes |", table)

  def test_an_estimate_whose_xla_flops_fall_short_is_flagged(self):
    rows = [self.result(1, 2.0, 0.5), self.result(2, 3.0, 1.0)]
    for r, ratio in zip(rows, (1.05, 0.74)):
      r["xla_cost_model_estimate"]["xla_flops_per_model_flop"] = ratio
    self.assertIn("XLA counted only 0.74x the model FLOPs", aot.format_table(rows))
    rows[1]["xla_cost_model_estimate"]["xla_flops_per_model_flop"] = 1.02
    self.assertNotIn("counted only", aot.format_table(rows))

  def test_memory_comes_from_compiles_of_the_trained_program(self):
    estimate = [dict(self.result(layers, 50.0 * layers, 0.5 * layers),
                     compiler_options=aot.ESTIMATE_COMPILER_OPTIONS) for layers in (1, 2)]
    scanned = self.result(32, 30.0, 0.0, unrolled=False)
    (row,) = aot.recipe_rows(estimate + [scanned])
    self.assertAlmostEqual(row["memory"]["total_bytes"], 30.0 * 2**30)
    self.assertNotIn("predicts", row["memory"]["source"])   # no line through estimate compiles
    self.assertAlmostEqual(row["xla_cost_model_estimate"]["step_seconds"], 16.0)
    (alone,) = aot.recipe_rows(estimate)
    self.assertIn("not the trained program", alone["memory"]["source"])

  def test_a_negative_cost_model_time_gives_no_estimate(self):
    rows = [self.result(1, 2.0, 0.5), self.result(2, 3.0, 1.0)]
    for r in rows:  # what libtpu 0.0.42 answers for v4 and v5e
      r["xla_cost_model_estimate"] = dict(optimal_seconds=-17.9, device_kind="TPU v4")
      r["device_kind"] = "TPU v4"
    (row,) = aot.recipe_rows(rows)
    self.assertNotIn("mfu", row["xla_cost_model_estimate"])
    self.assertIn("none: XLA's cost model gives a negative time for TPU v4", aot.format_table(rows))

  def test_stages_are_separate_rows(self):
    stage1 = dict(self.result(2, 3.0, 1.0), trained=["projector"])
    self.assertEqual(len(aot.recipe_rows([self.result(2, 3.0, 1.0), stage1])), 2)


class TpuCompileTest(absltest.TestCase):

  def test_tiny_splash_step_has_mosaic_kernels_forward_and_backward(self):
    layers = 2
    r = compile_for("v5p-8", "configs/finetune.py", "--config.model.attention=splash",
                    "--config.data.max_len=256", f"--config.model.llm.layers={layers}")
    # Per layer the splash kernel's forward, and its dq and dkv backward kernels (a forward
    # alone would give one per layer): an interpreted kernel (platform taken from the CPU host)
    # would leave none. Kernel names are not asserted: the HLO keeps their op_name metadata in
    # some runs only.
    self.assertEqual(r["mosaic_kernels"], 3 * layers, r["mosaic_kernel_names"])
    self.assertEqual(r["device_kind"], "TPU v5")
    self.assertTrue(r["memory"]["fits"])

  def test_tiny_generation_compiles_prefill_and_decode(self):
    r = compile_for("v5p-8", "configs/finetune.py", "--target=generate", "--prompt_len=128",
                    "--new_tokens=32", "--gen_batch=4")
    for phase in ("prefill", "decode"):
      self.assertTrue(r[phase]["memory"]["fits"], phase)
      self.assertGreater(r[phase]["xla_cost_model_estimate"]["flops"], 0, phase)
    self.assertEqual(r["device_kind"], "TPU v5")

  def test_estimate_compile_counts_every_matmul(self):
    # FSDP over 32 chips at the recipe's batch: with XLA's windowed einsum on, the weight-gradient
    # matmuls sit in collective-matmul loops the cost model counts once (XLA's FLOPs were 0.74x
    # the model's here); the estimate compiles turn it off.
    r = compile_for("v5p-64", "configs/finetune.py:llava15_7b", "--config.model.llm.layers=1",
                    "--config.data.max_images=0", "--config.model.attention=xla")
    self.assertEqual(r["compiler_options"], aot.ESTIMATE_COMPILER_OPTIONS)
    self.assertGreaterEqual(r["xla_cost_model_estimate"]["xla_flops_per_model_flop"], 1.0)
    self.assertNotIn("collective-permute", r["collectives"])

  def test_llava15_7b_stage2_fits_v5p8_sharded(self):
    r = compile_for("v5p-8", "configs/finetune.py:llava15_7b", "--config.model.llm.layers=2",
                    "--config.model.dtype=bfloat16", "--config.model.remat=full",
                    "--config.model.attention=splash",
                    "--config.mesh.data=1", "--config.mesh.fsdp=-1",
                    "--config.train.batch_size=8", "--config.data.max_len=2048")
    memory = r["memory"]
    self.assertLess(memory["total_bytes"], memory["capacity_bytes"])
    # Parameters and optimizer state split over the 4 chips (fsdp), not replicated: the step's
    # argument bytes per chip are about the state's total / chips (+ the batch's shard).
    per_chip = r["state_bytes_total"] / r["chips"]
    self.assertBetween(memory["argument_bytes"], 0.9 * per_chip, 1.2 * per_chip)
    # Compiled splash, not the interpreter (remat may add recomputed forward kernels).
    self.assertGreaterEqual(r["mosaic_kernels"], 3 * 2)
    # fsdp: weights gathered for use, gradients reduced (XLA picks reduce-scatter or all-reduce).
    self.assertIn("all-gather", r["collectives"])
    self.assertTrue({"reduce-scatter", "all-reduce"} & set(r["collectives"]), r["collectives"])


if __name__ == "__main__":
  absltest.main()
