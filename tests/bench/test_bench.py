"""Tests for llava_jax/bench/train_step.py (and torch_reference.py, launch/bench_gpu.sh) on tiny configs on CPU."""

import json
import os
import shlex
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from configs import finetune
from llava_jax.bench import flops
from llava_jax.bench import train_step
from llava_jax.config import schema
import tiny

_ROOT = str(tiny.REPO)
_SCRIPT = os.path.join(_ROOT, "launch", "bench_gpu.sh")


class SyntheticBatchTest(absltest.TestCase):

  def test_follows_the_batch_contract(self):
    cfg = schema.model_config("tiny")
    n = schema.num_image_tokens(cfg)
    b = train_step.synthetic_batch(cfg, batch_size=3, seq_len=200, images_per_row=2, fill=0.8)
    self.assertEqual({k: v.dtype for k, v in b.items()},
                     dict(input_ids=np.int32, labels=np.int32, segment_ids=np.int32,
                          positions=np.int32, pixels=np.float32))
    self.assertEqual(b["pixels"].shape, (3, 2, 64, 64, 3))
    is_image = b["input_ids"] == cfg.image_token_id
    np.testing.assert_array_equal(is_image.sum(1), [2 * n] * 3)
    self.assertTrue(is_image[:, 1:1 + 2 * n].all())
    np.testing.assert_array_equal(b["input_ids"][:, 0], train_step.BOS_ID)
    valid = b["segment_ids"] == 1
    self.assertTrue(set(np.unique(b["segment_ids"])) <= {0, 1})
    self.assertTrue((valid.sum(1) >= 160).all() and (valid.sum(1) <= 200).all())
    self.assertTrue((valid[:, :-1] >= valid[:, 1:]).all())   # padding only at the end
    # Supervised = valid text tokens, and labels equal the inputs there.
    supervised = b["labels"] != -100
    np.testing.assert_array_equal(supervised, valid & ~is_image & (np.arange(200) > 0))
    np.testing.assert_array_equal(b["labels"][supervised], b["input_ids"][supervised])
    np.testing.assert_array_equal(b["positions"][valid], np.nonzero(valid)[1])

  def test_rejects_rows_too_short_for_the_images(self):
    with self.assertRaisesRegex(ValueError, "cannot hold"):
      train_step.synthetic_batch(schema.model_config("tiny"), batch_size=1, seq_len=64,
                            images_per_row=1)


class BenchmarkTest(absltest.TestCase):
  """One tiny stage-2 benchmark with the torch comparison, compiled once for the class.

  It runs on the 8 fake CPU devices of conftest.py (data-parallel mesh), so the batch is 8 rows.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    config = finetune.get_config("demo")
    config.train.batch_size = 8
    config.data.max_len = 96
    cls.result = train_step.benchmark(config, steps=2, warmup=1, fill=0.75, compare_torch=True)

  def test_reports_sane_timings_and_throughput(self):
    r = self.result
    self.assertLen(r["step_times_s"], 2)
    self.assertGreater(r["step_time_s"], 0)
    self.assertGreater(r["compile_time_s"], 0)
    self.assertEqual(r["devices"], 8)
    self.assertAlmostEqual(r["tokens_per_s"], 8 * 96 / r["step_time_s"])
    self.assertAlmostEqual(r["samples_per_s"], 8 / r["step_time_s"])
    self.assertLess(r["nonpad_tokens_per_s"], r["tokens_per_s"])
    self.assertGreater(r["nonpad_tokens_per_s"], 0.7 * r["tokens_per_s"])
    self.assertTrue(np.all(np.isfinite(r["losses"])))
    self.assertGreater(r["peak_memory_bytes"], 0)
    self.assertEqual(r["trained"], ["projector", "llm"])

  def test_flops_and_mfu_follow_the_accounting(self):
    r = self.result
    expected = flops.train_step_flops(
        schema.model_config("tiny"), batch_size=8, seq_len=96, images_per_row=1,
        image_tokens=64, train_llm=True, train_projector=True)
    self.assertEqual(r["flops_per_step"], expected.as_dict())
    achieved = expected.total / r["step_time_s"] / 8
    self.assertAlmostEqual(r["tflops_per_s_per_device"], achieved / 1e12)
    self.assertAlmostEqual(r["mfu"], achieved / (r["peak_tflops_per_device"] * 1e12))
    self.assertEqual(r["peak_source"], "measured")   # CPUs are not in the table
    self.assertBetween(r["mfu"], 1e-4, 2.0)

  def test_times_the_torch_reference_on_the_same_batch(self):
    r = self.result
    self.assertLen(r["torch"]["losses"], 2)
    # Same initial distribution (normal 0.02) and batch: both start near log(vocab) = 7.6.
    self.assertAlmostEqual(r["torch"]["losses"][0], r["losses"][0], delta=0.5)
    # ABAB: the ratio is the median of per-pair ratios, not a ratio of two medians.
    pairs = sorted(a / b for a, b in zip(r["step_times_s"], r["torch"]["step_times_s"]))
    self.assertAlmostEqual(r["ratio_vs_torch"], (pairs[0] + pairs[1]) / 2)
    self.assertEqual(r["ratio_spread"], [pairs[0], pairs[1]])

  def test_result_is_json_and_tabulates(self):
    text = train_step.format_table([json.loads(json.dumps(self.result))])
    header, rule, row = text.splitlines()
    self.assertIn("MFU", header)
    self.assertIn("tiny_projector+llm", row)
    self.assertIn("%*", row)   # MFU against a measured peak is marked
    self.assertIn("step ms", train_step.format_result(self.result) + header)


class PipelineBenchmarkTest(absltest.TestCase):
  """--data=pipeline: real packed demo batches, one per step; samples/s counts packed samples."""

  def test_packed_batches_count_every_sample(self):
    config = finetune.get_config("demo")
    config.train.batch_size = 8
    config.data.update(max_len=256, max_images=4, pack=True, num_workers=0)
    r = train_step.benchmark(config, steps=2, warmup=1, data="pipeline")
    self.assertEqual(r["data"], "pipeline")
    self.assertGreater(r["samples_per_step"], 8)   # several samples share a row
    self.assertAlmostEqual(r["samples_per_s"], r["samples_per_step"] / r["step_time_s"])
    self.assertLessEqual(r["nonpad_tokens_per_s"], r["tokens_per_s"])
    self.assertNotIn("torch", r)   # the torch reference runs on synthetic batches only
    self.assertTrue(np.all(np.isfinite(r["losses"])))
    with self.assertRaisesRegex(ValueError, "--fill"):
      train_step.benchmark(config, steps=1, fill=0.5, data="pipeline")


class GpuScriptTest(absltest.TestCase):
  """launch/bench_gpu.sh: the H100 commands, and the whole script on tiny shapes on CPU."""

  def test_dry_run_benchmarks_the_7b_shapes(self):
    out = subprocess.run(["bash", _SCRIPT, "--dry-run", "--layers=6"], capture_output=True,
                         text=True, check=True,
                         env=dict(os.environ, PYTHON=sys.executable)).stdout
    decoder, stage1 = [shlex.split(l[2:]) for l in out.splitlines() if l.startswith("+ ")]
    for flag in ("--config=configs/finetune.py:llava15_7b", "--config.model.llm.layers=6",
                 "--config.model.llm.vocab_size=32000", "--config.data.max_len=2048",
                 "--config.train.batch_size=8", "--config.model.remat=dots",
                 "--config.model.dtype=bfloat16", "--config.model.attention=cudnn",
                 "--images_per_row=0"):
      self.assertIn(flag, decoder)
    for flag in ("--config=configs/pretrain.py:llava15_7b", "--config.model.dtype=bfloat16"):
      self.assertIn(flag, stage1)
    self.assertNotIn("--config.model.llm.layers=6", stage1)   # stage 1 keeps all 32 layers

  def test_small_run_prints_the_table_without_grain(self):
    with tempfile.TemporaryDirectory() as tmp:
      # The GPU machine has no Grain or TFDS: make importing them fail here too.
      blocker = os.path.join(tmp, "blocked")
      for name in ("grain", "tensorflow_datasets"):
        os.makedirs(os.path.join(blocker, name))
        with open(os.path.join(blocker, name, "__init__.py"), "w") as f:
          f.write(f"raise ImportError('{name} is not installed on the GPU machine')\n")
      env = dict(os.environ, PYTHONPATH=os.pathsep.join([blocker, _ROOT]), PYTHON=sys.executable)
      env.pop("XLA_FLAGS", None)
      out_dir = os.path.join(tmp, "results")
      run = subprocess.run(["bash", _SCRIPT, "--small", "--steps=1", f"--out={out_dir}"],
                           capture_output=True, text=True, env=env, timeout=600, check=False)
      self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
      table = run.stdout.strip().splitlines()[-4:]
      self.assertIn("MFU", table[0])
      self.assertIn("decoder7b", table[2])
      self.assertIn("stage1", table[3])
      with open(os.path.join(out_dir, "gpu_decoder7b.json")) as f:
        decoder = json.load(f)
      with open(os.path.join(out_dir, "gpu_stage1.json")) as f:
        stage1 = json.load(f)
    self.assertEqual(decoder["images_per_row"], 0)
    self.assertEqual(decoder["flops_per_step"]["vision"], 0)
    self.assertEqual(stage1["trained"], ["projector"])
    # Stage 1: the frozen decoder costs forward + input gradient (4·N·T), not 6·N·T.
    self.assertEqual(stage1["flops_per_step"]["llm_matmul"],
                     2 * stage1["batch_size"] * stage1["seq_len"]
                     * flops.decoder_flops_per_token(schema.model_config("tiny").llm))


class ReadResultsTest(absltest.TestCase):
  """The one `--table` reader (bench and aot): results in order; a bad file is named."""

  def test_reads_results_and_names_a_bad_file(self):
    from absl import app  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      good, broken, listed = (os.path.join(tmp, n) for n in ("a.json", "b.json", "c.json"))
      with open(good, "w") as f:
        json.dump({"name": "a"}, f)
      with open(broken, "w") as f:
        f.write('{"name": ')
      with open(listed, "w") as f:
        json.dump([1], f)
      self.assertEqual(train_step.read_results([good, good]), [{"name": "a"}] * 2)
      with self.assertRaisesRegex(app.UsageError, "b.json"):
        train_step.read_results([good, broken])
      with self.assertRaisesRegex(app.UsageError, "c.json holds a list"):
        train_step.read_results([listed])
      with self.assertRaisesRegex(app.UsageError, "name the JSON"):
        train_step.read_results([])


if __name__ == "__main__":
  absltest.main()
