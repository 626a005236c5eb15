"""Checkpoint verification: damaged steps are named and skipped (or refused in strict mode)."""

import pathlib
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np

from llava_jax.checkpoint import workdirs


def _config(**ckpt):
  return ml_collections.ConfigDict({"model": {"dim": 4},
                                    "checkpoint": {"max_to_keep": 3, "async_save": True, **ckpt}})


def _state(step):
  rng = np.random.default_rng(step)
  return {"step": np.int32(step),
          "params": {"w": rng.normal(size=(64, 32)).astype(np.float32),
                     "b": rng.normal(size=(32,)).astype(np.float32)},
          "opt_state": {"mu": rng.normal(size=(64, 32)).astype(np.float32)}}


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), _state(0))


def _data_files(step_dir):
  """The array data files of a step, biggest first (what a bit flip would hit)."""
  files = [p for p in (step_dir / workdirs.STATE).rglob("*") if p.is_file()]
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _flip_bit(path, offset_fraction=0.5):
  data = bytearray(path.read_bytes())
  data[int(len(data) * offset_fraction)] ^= 0x10
  path.write_bytes(bytes(data))


DAMAGE = {
    "bit_flip": lambda d: _flip_bit(_data_files(d)[0]),
    "bit_flip_near_start": lambda d: _flip_bit(_data_files(d)[0], 0.05),
    "truncated": lambda d: _data_files(d)[0].write_bytes(_data_files(d)[0].read_bytes()[:100]),
    "emptied": lambda d: _data_files(d)[0].write_bytes(b""),
    "deleted": lambda d: _data_files(d)[0].unlink(),
    "state_dir_deleted": lambda d: shutil.rmtree(d / workdirs.STATE),
    "meta_deleted": lambda d: shutil.rmtree(d / workdirs.META),
}


class VerifyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = pathlib.Path(tempfile.mkdtemp()) / "run"
    self.addCleanup(shutil.rmtree, self.workdir.parent)
    manager = workdirs.make_manager(self.workdir, _config().checkpoint)
    for step in (1, 2):
      workdirs.save(manager, step, _state(step), _config())
    workdirs.seal(manager)
    manager.close()
    self.latest = workdirs.checkpoints_dir(self.workdir) / "2"

  def restore(self, strict=False):
    manager = workdirs.make_manager(self.workdir, _config().checkpoint)
    try:
      return workdirs.restore_latest(manager, _abstract(), strict=strict)
    finally:
      manager.close()

  def test_every_committed_step_has_checksums_and_the_config_hash(self):
    for step in (1, 2):
      step_dir = workdirs.checkpoints_dir(self.workdir) / str(step)
      self.assertTrue(workdirs.verify_step(step_dir))
      record = (step_dir / workdirs.CHECKSUMS).read_text()
      self.assertIn(workdirs.config_sha256(_config().to_dict()), record)
    step, state = self.restore()
    self.assertEqual(step, 2)
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])

  @parameterized.named_parameters(*DAMAGE.items())
  def test_a_damaged_step_is_named_and_the_older_one_restored(self, damage):
    damage(self.latest)
    with self.assertLogs(level="WARNING") as logs:
      step, state = self.restore()
    self.assertEqual(step, 1)
    np.testing.assert_array_equal(state["params"]["w"], _state(1)["params"]["w"])
    text = "\n".join(logs.output)
    self.assertRegex(text, r"checkpoints/2/(state|meta|_CHECKPOINT)[^:]*: (file missing|size|"
                     r"checksum mismatch)")
    self.assertIn("restored step 1 after skipping damaged steps", text)
    # Kept for inspection, out of the way of the step the resumed run will save again.
    self.assertTrue((self.workdir / workdirs.DAMAGED / "2").is_dir())
    self.assertFalse(self.latest.exists())

  @parameterized.named_parameters(*DAMAGE.items())
  def test_strict_restore_refuses_naming_the_file(self, damage):
    damage(self.latest)
    with self.assertRaisesRegex(workdirs.CheckpointError,
                                r"checkpoints/2/.*strict_restore=true: not falling back"):
      self.restore(strict=True)
    self.assertTrue(self.latest.exists())

  @parameterized.named_parameters(*DAMAGE.items())
  def test_restore_params_verifies_and_falls_back(self, damage):
    damage(self.latest)
    with self.assertLogs(level="WARNING") as logs:
      params = workdirs.restore_params(self.workdir)
    np.testing.assert_array_equal(params["w"], _state(1)["params"]["w"])
    self.assertIn("checkpoints/2", "\n".join(logs.output))
    with self.assertRaisesRegex(workdirs.CheckpointError, "checkpoints/2"):
      workdirs.restore_params(self.workdir, strict=True)
    with self.assertRaisesRegex(workdirs.CheckpointError, "checkpoints/2"):
      workdirs.restore_params(self.latest)   # a step directory given: no fallback

  def test_config_and_params_come_from_the_same_intact_step(self):
    _flip_bit(_data_files(self.latest)[0])
    config, params = workdirs.read_config_and_params(self.workdir)
    self.assertEqual(config.model.dim, 4)
    np.testing.assert_array_equal(params["w"], _state(1)["params"]["w"])

  def test_every_step_damaged_is_an_error(self):
    for step in (1, 2):
      _flip_bit(_data_files(workdirs.checkpoints_dir(self.workdir) / str(step))[0])
    with self.assertRaisesRegex(workdirs.CheckpointError, "no intact step"):
      self.restore()

  def test_a_step_without_checksums_restores_unverified_with_a_warning(self):
    (self.latest / workdirs.CHECKSUMS).unlink()
    with self.assertLogs(level="WARNING") as logs:
      step, _ = self.restore()
    self.assertEqual(step, 2)
    self.assertIn("restoring it unverified", "\n".join(logs.output))

  def test_an_unverified_unreadable_step_counts_as_damaged(self):
    (self.latest / workdirs.CHECKSUMS).unlink()
    shutil.rmtree(self.latest / workdirs.STATE)
    with self.assertLogs(level="WARNING"):
      step, _ = self.restore()
    self.assertEqual(step, 1)


class ConfigFileTest(absltest.TestCase):

  def test_a_different_config_json_is_kept(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, workdir)
    workdirs.write_config(workdir, _config())
    workdirs.write_config(workdir, _config())   # same: nothing kept
    self.assertFalse((workdir / "config.previous-1.json").exists())
    workdirs.write_config(workdir, _config(max_to_keep=5))
    self.assertIn('"max_to_keep": 3', (workdir / "config.previous-1.json").read_text())
    self.assertIn('"max_to_keep": 5', (workdir / "config.json").read_text())


if __name__ == "__main__":
  absltest.main()
