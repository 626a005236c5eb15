"""loop.run: outputs, exact resume (SIGTERM and kill -9), non-finite handling, init, overfitting."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import jax
import numpy as np
import orbax.checkpoint as ocp

from llava_jax import sharding
from llava_jax.checkpoint import model_dir
from llava_jax.checkpoint import workdirs
from llava_jax.train import init as init_lib
from llava_jax.train import loop
from llava_jax.train import metrics as metrics_lib
import tiny
import train_fixtures

REPO = tiny.REPO


def _committed_steps(workdir) -> list[int]:
  return ocp.utils.checkpoint_steps(workdirs.checkpoints_dir(workdir))


def _sigterm_self(batch):
  os.kill(os.getpid(), signal.SIGTERM)
  return batch


def _poison(batch):
  return dict(batch, pixels=np.full_like(batch["pixels"], np.nan))


class LoopTest(absltest.TestCase):
  """One straight 6-step run is the reference every other run is compared with."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    train_fixtures.use_compilation_cache()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.config = train_fixtures.tiny_config(steps=6)
    cls.config.checkpoint.every_steps = 3
    cls.straight_dir = cls.tmp / "straight"
    state = loop.run(cls.config, cls.straight_dir, train_fixtures.synthetic_data(cls.config))
    cls.final_step = int(state.step)
    cls.final_params = jax.device_get(state.params)
    cls.straight = metrics_lib.read_metrics(cls.straight_dir)

  def assert_same_run(self, workdir, params):
    """Bit-identical per-step losses and final parameters as the straight run."""
    self.assertEqual([m["loss"] for m in metrics_lib.read_metrics(workdir)],
                     [m["loss"] for m in self.straight])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), self.final_params)

  def test_writes_metrics_checkpoints_tensorboard_and_config(self):
    self.assertEqual(self.final_step, 6)
    self.assertEqual([m["step"] for m in self.straight], [1, 2, 3, 4, 5, 6])
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "supervised_tokens", "time"):
      self.assertIn(key, self.straight[-1])
    self.assertTrue(all(np.isfinite(m["loss"]) for m in self.straight))
    self.assertLess(self.straight[-1]["loss"], self.straight[0]["loss"])
    self.assertEqual(_committed_steps(self.straight_dir), [3, 6])
    self.assertNotEmpty(list((self.straight_dir / "tensorboard").glob("events.out.tfevents.*")))
    saved = json.loads((self.straight_dir / "config.json").read_text())
    self.assertEqual(saved["train"]["steps"], 6)
    self.assertEqual(workdirs.read_config(self.straight_dir).optim.trainable,
                     list(self.config.optim.trainable))
    params = workdirs.restore_params(self.straight_dir)
    jax.tree.map(np.testing.assert_array_equal, params, self.final_params)

  def test_sigterm_saves_and_a_restart_resumes_exactly(self):
    workdir = self.tmp / "sigterm"
    data = train_fixtures.synthetic_data(self.config)
    data.iterator = train_fixtures.FaultyIterator(data.iterator, at=4, fault=_sigterm_self)
    state = loop.run(self.config, workdir, data)
    self.assertEqual(int(state.step), 4)
    self.assertEqual(_committed_steps(workdir), [3, 4])
    state = loop.run(self.config, workdir, train_fixtures.synthetic_data(self.config))
    self.assertEqual(int(state.step), 6)
    self.assert_same_run(workdir, state.params)

  def test_kill_9_during_an_async_save_resumes_from_the_last_committed_step(self):
    workdir = self.tmp / "killed"
    code = ("import sys, train_fixtures; "
            "train_fixtures.train_with_slow_saves(sys.argv[1], steps=6, every_steps=1)")
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'tests'}",
               **train_fixtures.COMPILATION_CACHE)
    proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    try:
      while time.time() < deadline and proc.poll() is None:
        names = os.listdir(workdirs.checkpoints_dir(workdir)) if workdir.exists() and \
            workdirs.checkpoints_dir(workdir).exists() else []
        if any("tmp" in n for n in names) and len(_committed_steps(workdir)) >= 2:
          proc.send_signal(signal.SIGKILL)
          break
        time.sleep(0.02)
    finally:
      proc.kill()
      stderr = proc.communicate()[1].decode()
    killed_at = time.time()
    self.assertEqual(proc.returncode, -signal.SIGKILL, stderr[-3000:])
    last = max(_committed_steps(workdir))
    self.assertLess(last, 6)
    self.assertTrue(any("tmp" in n for n in os.listdir(workdirs.checkpoints_dir(workdir))))

    state = loop.run(self.config, workdir, train_fixtures.synthetic_data(self.config))
    records = metrics_lib.read_metrics(workdir)
    # Steps up to the last committed one are the killed run's; the rest were trained after it.
    self.assertTrue(all((m["time"] < killed_at) == (m["step"] <= last) for m in records))
    self.assertFalse(any("tmp" in n for n in os.listdir(workdirs.checkpoints_dir(workdir))))
    self.assert_same_run(workdir, state.params)

  def test_non_finite_loss_stops_naming_the_step(self):
    config = train_fixtures.tiny_config(steps=6)   # the straight run's step: compiled already
    data = train_fixtures.synthetic_data(config)
    data.iterator = train_fixtures.FaultyIterator(data.iterator, at=2, fault=_poison)
    with self.assertRaisesRegex(FloatingPointError, "step 2: non-finite"):
      loop.run(config, self.tmp / "nonfinite_stop", data)

  def test_non_finite_loss_is_skipped_when_asked(self):
    config = train_fixtures.tiny_config(steps=6, on_nonfinite="skip")
    data = train_fixtures.synthetic_data(config)
    data.iterator = train_fixtures.FaultyIterator(data.iterator, at=2, fault=_poison)
    state = loop.run(config, self.tmp / "nonfinite_skip", data)
    self.assertEqual(int(state.step), 6)
    finite = [m["finite"] for m in metrics_lib.read_metrics(self.tmp / "nonfinite_skip")]
    self.assertEqual(finite, [True, False, True, True, True, True])
    self.assertTrue(all(np.isfinite(x).all() for x in jax.tree.leaves(state.params)))

  def test_init_from_a_workdir_and_projector_from_a_stage_1_run(self):
    config = train_fixtures.tiny_config("pretrain")
    factory, _ = loop.make_factory(config, sharding.make_mesh(config.mesh), 6)
    rng = jax.random.key(7)
    config.init.params_from = str(self.straight_dir)
    params = jax.device_get(init_lib.initial_params(config.init, factory, rng))
    jax.tree.map(np.testing.assert_array_equal, params, self.final_params)

    # A model directory as `convert from-hf` writes it.
    model_dir_path = self.tmp / "model_dir"
    model_dir.save_params(model_dir_path / model_dir.PARAMS, self.final_params)
    model_dir.write_config(model_dir_path, config.model)
    model_dir.seal(model_dir_path, config.model)
    config.init.params_from = str(model_dir_path)
    params = jax.device_get(init_lib.initial_params(config.init, factory, rng))
    jax.tree.map(np.testing.assert_array_equal, params, self.final_params)

    config.init.params_from, config.init.projector_from = "", str(self.straight_dir)
    params = jax.device_get(init_lib.initial_params(config.init, factory, rng))
    jax.tree.map(np.testing.assert_array_equal, params["projector"],
                 self.final_params["projector"])
    random = jax.device_get(factory.random_params(rng))
    jax.tree.map(np.testing.assert_array_equal, params["llm"], random["llm"])


class ConfigCheckTest(absltest.TestCase):

  def test_bad_settings_fail_before_training(self):
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    config = train_fixtures.tiny_config(on_nonfinite="ignore")
    with self.assertRaisesRegex(ValueError, "on_nonfinite"):
      loop.check_train_config(config, mesh)
    config = train_fixtures.tiny_config(batch_size=8, grad_accum_steps=2)   # 4 rows, 8 devices
    with self.assertRaisesRegex(ValueError, "batch_size=8 must be a multiple"):
      loop.check_train_config(config, mesh)
    config.train.batch_size = 16
    loop.check_train_config(config, mesh)
    config.data.max_len = config.model.llm.max_len + 1
    with self.assertRaisesRegex(ValueError, "data.max_len=.* exceeds .*llm.max_len"):
      loop.check_train_config(config, mesh)
    config.data.max_len, config.model.attention = 200, "splash"
    with self.assertRaisesRegex(ValueError, "splash.*multiple of 128"):
      loop.check_train_config(config, mesh)

  def test_epochs_become_steps_unless_steps_are_given(self):
    config = train_fixtures.tiny_config(steps=0, epochs=3, batch_size=8)
    self.assertEqual(loop.total_steps(config, num_records=126), 47)
    config.train.steps = 5
    self.assertEqual(loop.total_steps(config, num_records=126), 5)


class OverfitTest(absltest.TestCase):

  def test_tiny_model_memorizes_four_demo_samples(self):
    train_fixtures.use_compilation_cache()
    tmp = pathlib.Path(tempfile.mkdtemp())
    config = train_fixtures.tiny_config(steps=100, batch_size=4)
    config.optim.lr = 6e-3
    config.data.max_len = 96
    records = json.loads(pathlib.Path(config.data.path).read_text())[:4]
    config.data.path = str(tmp / "four.json")
    pathlib.Path(config.data.path).write_text(json.dumps(records))
    config.checkpoint.every_steps = 1000
    config.mesh.update(dict(data=4, fsdp=1, tensor=2))
    loop.run(config, tmp / "workdir")   # the real pipeline over data/demo records
    losses = [m["loss"] for m in metrics_lib.read_metrics(tmp / "workdir")]
    self.assertGreater(losses[0], 5.0)
    self.assertLess(losses[-1], 0.1)


if __name__ == "__main__":
  absltest.main()
