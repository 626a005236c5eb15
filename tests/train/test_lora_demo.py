"""The LoRA demo recipe end to end (issue 14, point 5): `configs/finetune_lora.py` trains the demo
model's adapters with the loss going down, and the chat and export commands it prints work as
printed (chat also with the adapters applied on the fly)."""

import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
import pytest

from llava_jax.train import metrics as metrics_lib
import tiny

REPO = tiny.REPO
STEPS = 30


@pytest.mark.integration
class LoraDemoTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="lora_demo_"))
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)

  def _run(self, args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return proc

  def test_demo_trains_and_its_printed_commands_work(self):
    workdir = self.tmp / "lora"
    train = self._run(["-m", "llava_jax.main", "--config=configs/finetune_lora.py",
                       f"--config.train.steps={STEPS}", f"--workdir={workdir}"])
    losses = [m["loss"] for m in metrics_lib.read_metrics(workdir)]
    self.assertLen(losses, STEPS)
    # The adapters learn: the last steps' loss well below the first steps'.
    self.assertLess(np.mean(losses[-5:]), 0.8 * np.mean(losses[:3]), losses)
    commands = [shlex.split(line.strip())[1:] for line in train.stdout.splitlines()
                if line.strip().startswith("python -m llava_jax.")]
    chat, to_peft, to_hf = commands
    self.assertEqual(chat[:2], ["-m", "llava_jax.chat"])
    ask = ["--prompt=What is in the image?", "--max_new_tokens=6"]
    merged = self._run(chat + ask).stdout
    on_the_fly = self._run(chat + ask + ["--nomerge_adapter"]).stdout
    self.assertTrue(merged.strip())
    self.assertEqual(on_the_fly, merged)
    self._run(to_peft)
    self.assertTrue((workdir / "peft" / "adapter_config.json").is_file())
    self.assertTrue((workdir / "peft" / "adapter_model.safetensors").is_file())
    self._run(to_hf)
    self.assertTrue((workdir / "hf" / "config.json").is_file())


if __name__ == "__main__":
  absltest.main()
