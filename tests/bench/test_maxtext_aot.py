"""llava_jax.bench.maxtext_aot: MaxText's train_compile run in its venv, read into an aot row.

MaxText itself (Python >= 3.12, its own jax and libtpu, ~240 packages) is not installed by the
suite; its README command and figures are in the README. Here a stand-in interpreter answers the
version probe and prints what `train_compile` prints (lines copied from a real run's log), and
records the command line it was given.
"""

import json
import os
import pathlib
import stat
import sys
import tempfile
import textwrap

from absl.testing import absltest

from llava_jax.bench import aot
from llava_jax.bench import flops as flops_lib
from llava_jax.bench import maxtext_aot
from llava_jax.config import schema

_SUCCESS = """\
I1202 07:52:57.174854 pyconfig.py:591] Config param base_num_decoder_layers: {layers}
I1202 07:52:57.181750 pyconfig.py:591] Config param num_decoder_layers: {layers}
Jitting and compiling train step...
Finished train_compile.py successfully!
Cost analysis: {{'utilization3{{}}': 130.0, 'flops': 1.2e13, 'optimal_seconds': {seconds}}}
Memory analysis: CompiledMemoryStats(generated_code_size_in_bytes=40044544, \
argument_size_in_bytes=174367744, output_size_in_bytes=174209760, alias_size_in_bytes=174203904, \
temp_size_in_bytes=3684499456, host_generated_code_size_in_bytes=0, host_temp_size_in_bytes=0)
"""
_OOM = ("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. "
        "Ran out of memory in memory space hbm. Used 120.5G of 95.0G hbm.\n")


def fake_python(folder: str, output: str) -> str:
  """An executable standing in for a MaxText venv's python: records argv, prints `output`."""
  path = os.path.join(folder, "python")
  with open(path, "w") as f:
    f.write(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        if sys.argv[1] == "-c":
          print(json.dumps(dict(site={folder!r}, maxtext="0.2.5", jax="0.12.0.1", libtpu="0.0.52")))
        else:
          open({os.path.join(folder, "argv.json")!r}, "w").write(json.dumps(sys.argv[1:]))
          sys.stdout.write({output!r})
        """))
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


class MaxTextAotTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def compile(self, layers, seconds, **kw):
    python = fake_python(self.dir, _SUCCESS.format(layers=layers, seconds=seconds))
    result = maxtext_aot.run(python, "v5p-64", layers=layers, **kw)
    argv = json.loads(pathlib.Path(self.dir, "argv.json").read_text())
    return result, argv

  def test_command_is_maxtexts_train_compile_for_the_slice(self):
    _, argv = self.compile(2, 0.0684, attention="dot_product")
    self.assertEqual(argv[:3], ["-m", "maxtext.trainers.pre_train.train_compile",
                                os.path.join(self.dir, "configs", "base.yml")])
    for arg in ("compile_topology=v5p-64", "model_name=llama2-7b",
                "per_device_batch_size=4",              # 128 rows over 32 chips
                "max_target_length=2048", "remat_policy=full", "attention=dot_product",
                "scan_layers=False", "override_model_config=True", "base_num_decoder_layers=2",
                # as our estimate compiles: no windowed-einsum loops hiding matmuls
                "compile_xla_flags=--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false "
                "--xla_tpu_enable_windowed_einsum_for_all_gather=false"):
      self.assertIn(arg, argv)

  def test_result_reads_memory_and_estimate(self):
    r, _ = self.compile(2, 0.0684)
    m = r["memory"]
    self.assertEqual(m["total_bytes"], 174367744 + 174209760 + 3684499456 - 174203904)
    self.assertEqual(m["capacity_bytes"], 95 * 2**30)
    self.assertTrue(m["fits"])
    cfg = schema.model_config("llava15_7b")
    cfg.llm.layers, cfg.llm.vocab_size = 2, 32000
    flops = flops_lib.train_step_flops(cfg, batch_size=128, seq_len=2048, images_per_row=0,
                                       image_tokens=0, train_llm=True, train_projector=False).total
    self.assertEqual(r["model_flops_per_step"], flops)
    self.assertAlmostEqual(r["xla_cost_model_estimate"]["mfu"], flops / 0.0684 / (32 * 459e12))
    self.assertEqual((r["llm_layers"], r["full_layers"], r["images_per_row"]), (2, 32, 0))
    self.assertIn("MaxText 0.2.5", r["source"])

  def test_rows_join_the_aot_table_and_extrapolate(self):
    rows = [self.compile(1, 0.041)[0], self.compile(2, 0.0684)[0]]
    (row,) = aot.recipe_rows(rows)
    self.assertAlmostEqual(row["xla_cost_model_estimate"]["step_seconds"], 0.041 + 31 * 0.0274)
    table = aot.format_table(rows)
    self.assertIn("| maxtext llama2-7b (text only) | 2 | v5p-64 | dot_product | 1,32,1 |", table)
    self.assertIn("(unrolled L=1,2, linear in L", table)
    # The stand-in's 1.2e13 FLOPs per chip are under the model's: flagged as hidden work.
    self.assertIn("XLA counted only 0.44x the model FLOPs", table)

  def test_flash_rows_have_no_estimate_in_the_table(self):
    python = fake_python(self.dir, _SUCCESS.format(layers=32, seconds=0.038))
    r = maxtext_aot.run(python, "v5p-64", unroll=False, attention="flash")
    self.assertNotIn("mfu", r["xla_cost_model_estimate"])
    self.assertIn("| - |", aot.format_table([r]))

  def test_out_of_memory_is_reported(self):
    python = fake_python(self.dir, _OOM)
    with self.assertRaisesRegex(maxtext_aot.MaxTextError, "RESOURCE_EXHAUSTED.*120.5G of 95.0G"):
      maxtext_aot.run(python, "v5p-64")

  def test_bad_input_is_refused_before_compiling(self):
    python = fake_python(self.dir, _SUCCESS.format(layers=1, seconds=0.04))
    with self.assertRaisesRegex(ValueError, "not a multiple of 32 chips"):
      maxtext_aot.run(python, "v5p-64", batch_size=100)
    with self.assertRaisesRegex(ValueError, "--model"):
      maxtext_aot.run(python, "v5p-64", model="gpt3")
    with self.assertRaisesRegex(maxtext_aot.MaxTextError, "cannot import maxtext"):
      maxtext_aot.run(sys.executable, "v5p-64")   # this suite's venv has no maxtext


if __name__ == "__main__":
  absltest.main()
