"""Resuming a training workdir: damaged steps fall back bit-exactly, changed settings are named."""

import pathlib
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from llava_jax.checkpoint import sources
from llava_jax.checkpoint import workdirs
from llava_jax.train import loop
from llava_jax.train import metrics as metrics_lib
from llava_jax.train import resume
import tiny
import train_fixtures


def _flip_a_bit_in_the_arrays(step_dir):
  files = sorted((p for p in (step_dir / workdirs.STATE).rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  data = bytearray(files[-1].read_bytes())
  data[len(data) // 2] ^= 0x04
  files[-1].write_bytes(bytes(data))


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    train_fixtures.use_compilation_cache()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.config = train_fixtures.tiny_config(steps=4)
    cls.config.checkpoint.every_steps = 2
    cls.straight_dir = cls.tmp / "straight"
    state = loop.run(cls.config, cls.straight_dir, train_fixtures.synthetic_data(cls.config))
    cls.final_params = jax.device_get(state.params)
    cls.losses = [m["loss"] for m in metrics_lib.read_metrics(cls.straight_dir)]

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def copy(self, name):
    workdir = self.tmp / name
    shutil.copytree(self.straight_dir, workdir)
    return workdir

  def run_again(self, workdir, config=None):
    config = config or self.config
    return loop.run(config, workdir, train_fixtures.synthetic_data(config))

  def test_a_bit_flip_in_the_last_step_falls_back_and_trains_to_the_same_result(self):
    workdir = self.copy("flipped")
    _flip_a_bit_in_the_arrays(workdirs.checkpoints_dir(workdir) / "4")
    with self.assertLogs(level="WARNING") as logs:
      state = self.run_again(workdir)
    self.assertRegex("\n".join(logs.output), r"checkpoints/4/state/.*checksum mismatch")
    self.assertEqual(int(state.step), 4)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), self.final_params)
    self.assertEqual([m["loss"] for m in metrics_lib.read_metrics(workdir)], self.losses)
    self.assertTrue((workdir / workdirs.DAMAGED / "4").is_dir())
    self.assertTrue(workdirs.verify_step(workdirs.checkpoints_dir(workdir) / "4"))

  def test_strict_restore_refuses_the_damaged_step(self):
    workdir = self.copy("strict")
    _flip_a_bit_in_the_arrays(workdirs.checkpoints_dir(workdir) / "4")
    config = train_fixtures.tiny_config(steps=4)
    config.checkpoint.update(dict(every_steps=2, strict_restore=True))
    with self.assertRaisesRegex(workdirs.CheckpointError, r"checkpoints/4/state/.*checksum"):
      self.run_again(workdir, config)

  def test_a_changed_model_size_stops_naming_the_field_and_both_values(self):
    workdir = self.copy("bigger")
    config = train_fixtures.tiny_config(steps=4)
    config.model.llm.dim = 128
    with self.assertRaisesRegex(resume.ConfigChangedError,
                                r"config.model.llm.dim: saved 64, now 128"):
      self.run_again(workdir, config)
    config.train.allow_config_change = True   # shapes can never be allowed
    with self.assertRaisesRegex(resume.ConfigChangedError, "change parameter shapes"):
      self.run_again(workdir, config)

  def test_a_changed_batch_size_stops_unless_allowed_and_the_old_config_is_kept(self):
    workdir = self.copy("batch")
    config = train_fixtures.tiny_config(steps=6, batch_size=16)
    config.checkpoint.every_steps = 2
    with self.assertRaisesRegex(resume.ConfigChangedError,
                                r"config.train.batch_size: saved 8, now 16(.|\n)*"
                                r"config.train.steps: saved 4, now 6(.|\n)*allow_config_change"):
      self.run_again(workdir, config)
    config.train.allow_config_change = True
    with self.assertLogs(level="WARNING") as logs:
      state = self.run_again(workdir, config)
    self.assertEqual(int(state.step), 6)
    self.assertIn("changed schedule (train.allow_config_change=true)", "\n".join(logs.output))
    self.assertIn('"batch_size": 8', (workdir / "config.previous-1.json").read_text())
    self.assertIn('"batch_size": 16', (workdir / "config.json").read_text())

  def test_export_and_load_read_the_newest_intact_step(self):
    workdir = self.copy("export")
    steps = workdirs.checkpoints_dir(workdir)
    step_2 = workdirs.restore_params(steps / "2")
    _flip_a_bit_in_the_arrays(steps / "4")
    with self.assertLogs(level="WARNING") as logs:
      loaded = sources.read_checkpoint(workdir)   # what to-hf and llava_jax.load read
    self.assertRegex("\n".join(logs.output), r"checkpoints/4/state/.*checksum mismatch")
    jax.tree.map(np.testing.assert_array_equal, loaded.params, step_2)
    # Every step damaged: to-hf exits naming them, not with an Orbax traceback.
    for file in [p for p in (steps / "2" / workdirs.STATE).rglob("*") if p.is_file()]:
      if file.stat().st_size > 1000:
        file.write_bytes(file.read_bytes()[:100])   # truncated
    result = subprocess.run(
        [sys.executable, "-m", "llava_jax.convert", "to-hf", f"--ckpt={workdir}",
         f"--out={self.tmp / 'export_hf'}"], capture_output=True, text=True, timeout=300,
        cwd=tiny.REPO)
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("no intact step", result.stderr)
    self.assertNotIn("Event loop is closed", result.stderr)

  def test_a_torn_metrics_line_is_dropped_with_a_warning(self):
    workdir = self.copy("torn")
    metrics = workdir / metrics_lib.METRICS_FILE
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": 1.2')
    with self.assertLogs(level="WARNING") as logs:
      records = metrics_lib.read_metrics(workdir)
    self.assertLen(records, 4)
    self.assertRegex("\n".join(logs.output), r"metrics.jsonl:5: dropped a torn last line")
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:1] + ["{torn"] + lines[1:]) + "\n")
    with self.assertRaisesRegex(metrics_lib.MetricsFileError, r"metrics.jsonl:2: not a JSON"):
      metrics_lib.read_metrics(workdir)


if __name__ == "__main__":
  absltest.main()
