"""`python -m llava_jax.main` end to end on the demo data: SIGTERM saves and exits 0; a rerun
resumes, finishes and prints how to chat with and export the checkpoint."""

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import orbax.checkpoint as ocp

from llava_jax import main as main_lib
from llava_jax.checkpoint import workdirs
from llava_jax.train import metrics as metrics_lib
import tiny
import train_fixtures

REPO = tiny.REPO


class MainTest(absltest.TestCase):

  def test_default_workdir_names_config_and_preset(self):
    self.assertEqual(main_lib.default_workdir("configs/finetune.py"),
                     os.path.join("workdir", "finetune-demo"))
    self.assertEqual(main_lib.default_workdir("/x/configs/pretrain.py:llava15_7b"),
                     os.path.join("workdir", "pretrain-llava15_7b"))

  def test_sigterm_then_resume_to_the_end(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / "run"
    config = train_fixtures.tiny_config()
    config.data.max_len = 96   # room for a demo answer after the image tokens
    command = [sys.executable, "-m", "llava_jax.main", "--config=configs/finetune.py",
               f"--workdir={workdir}", "--config.checkpoint.every_steps=1000",
               *train_fixtures.command_line_overrides(config)]
    env = dict(os.environ, **train_fixtures.COMPILATION_CACHE)

    # 1. A long run, preempted once it has logged two steps.
    proc = subprocess.Popen(command + ["--config.train.steps=100000"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
      if len(metrics_lib.read_metrics(workdir)) >= 2:
        proc.send_signal(signal.SIGTERM)
        break
      time.sleep(0.1)
    output = proc.communicate(timeout=300)[0].decode()
    self.assertEqual(proc.returncode, 0, output[-3000:])
    self.assertIn(f"workdir: {workdir}", output)
    last = metrics_lib.read_metrics(workdir)[-1]["step"]
    self.assertIn(f"SIGTERM: saving step {last}", output)
    self.assertEqual(ocp.utils.checkpoint_steps(workdirs.checkpoints_dir(workdir)), [last])

    # 2. The same command resumes from that step and runs to the (now nearer) end; a changed
    # step count must be allowed explicitly.
    result = subprocess.run(command + [f"--config.train.steps={last + 2}",
                                       "--config.train.allow_config_change=true"],
                            cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400)
    output = result.stdout.decode()
    self.assertEqual(result.returncode, 0, output[-3000:])
    self.assertEqual([m["step"] for m in metrics_lib.read_metrics(workdir)],
                     list(range(1, last + 3)))
    self.assertIn(f"Training done at step {last + 2}", output)
    self.assertIn(f"python -m llava_jax.chat --ckpt={workdir} --image=", output)
    self.assertIn(f"python -m llava_jax.convert to-hf --ckpt={workdir} --out=", output)
    self.assertEqual(workdirs.read_config(workdir).train.steps, last + 2)


if __name__ == "__main__":
  absltest.main()
