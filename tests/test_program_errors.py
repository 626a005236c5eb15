"""Every program prints a damaged checkpoint or a bad config as an error line, never a traceback.

Runs main, chat, serve, evaluate and convert (to-hf, to-peft) in subprocesses on a damaged model
directory, a truncated training workdir, a LoRA workdir with a flipped bit, a model directory with a
bad config and a missing path.
"""

import concurrent.futures
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
import pytest

from llava_jax.checkpoint import workdirs
import tiny
import train_fixtures


def _biggest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_a_bit(directory: pathlib.Path) -> str:
  """Flips one bit in the biggest file under `directory`; returns its name."""
  biggest = _biggest_file(directory)
  data = bytearray(biggest.read_bytes())
  data[len(data) // 2] ^= 0x10
  biggest.write_bytes(bytes(data))
  return biggest.name


def _truncate(directory: pathlib.Path) -> str:
  """Cuts the biggest file under `directory` to half (a copy or a disk that ran out)."""
  biggest = _biggest_file(directory)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 2])
  return biggest.name


def _damaged_workdir(path: pathlib.Path, lora: bool, damage) -> str:
  """A training workdir with one committed, sealed step; `damage(state_dir)` names the file."""
  config = ml_collections.ConfigDict({
      "model": tiny.model_config().to_dict(), "init": {"params_from": ""},
      "lora": {"rank": 4 if lora else 0},
      "checkpoint": {"max_to_keep": 2, "async_save": False}})
  params = {"w": np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)}
  manager = workdirs.make_manager(path, config.checkpoint)
  workdirs.save(manager, 1, {"step": np.int32(1), "params": params, "opt_state": {}}, config)
  workdirs.seal(manager)
  manager.close()
  workdirs.write_config(path, config)
  return damage(workdirs.checkpoints_dir(path) / "1" / workdirs.STATE)


# One subprocess each (seconds of imports): to-hf on a damaged model directory and the bad model
# config through to-hf run in-process in test_convert.
def _run(args: list[str]) -> subprocess.CompletedProcess:
  """The program's exit; one that keeps running (a server on a damaged model) is a failure."""
  try:
    return subprocess.run([sys.executable, *args], cwd=tiny.REPO, capture_output=True, text=True,
                          timeout=240)
  except subprocess.TimeoutExpired as e:
    return subprocess.CompletedProcess(args, 0, "", f"still running after {e.timeout} s")


CASES = ("main_damaged_workdir", "main_bad_config", "chat_damaged", "chat_bad_config",
         "serve_damaged", "evaluate_damaged", "to_hf_damaged_workdir", "to_hf_missing",
         "to_peft_damaged_workdir", "to_peft_not_lora")


@pytest.mark.integration
class ProgramErrorsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="program_errors_"))
    cls.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
    damaged = tiny.write_model_dir(tmp / "damaged_model")
    cls.damaged_file = _flip_a_bit(damaged / "params")
    bad_config = tiny.write_model_dir(tmp / "bad_config")
    config = json.loads((bad_config / "config.json").read_text())
    config["model"]["dtype"] = "float33"
    (bad_config / "config.json").write_text(json.dumps(config))
    (bad_config / workdirs.CHECKSUMS).unlink()   # as a hand-edited older directory
    cls.workdir_file = _damaged_workdir(tmp / "workdir", lora=False, damage=_truncate)
    cls.lora_file = _damaged_workdir(tmp / "lora_workdir", lora=True, damage=_flip_a_bit)
    out = tmp / "out"
    overrides = train_fixtures.command_line_overrides(train_fixtures.tiny_config())
    # name -> (arguments, what the error line must name)
    cls.cases = {
        "main_damaged_workdir": (
            ["-m", "llava_jax.main", f"--workdir={tmp / 'workdir'}",
             "--config.checkpoint.strict_restore=true", *overrides], cls.workdir_file),
        "main_bad_config": (["-m", "llava_jax.main", "--config.train.steps=-5"],
                            "config.train.steps=-5"),
        "chat_damaged": (["-m", "llava_jax.chat", f"--ckpt={damaged}", "--prompt=Hi"],
                         cls.damaged_file),
        "chat_bad_config": (["-m", "llava_jax.chat", f"--ckpt={bad_config}", "--prompt=Hi"],
                            "config.model.dtype='float33'"),
        "serve_damaged": (["-m", "llava_jax.serve", f"--ckpt={damaged}", "--port=0"],
                          cls.damaged_file),
        "evaluate_damaged": (["-m", "llava_jax.evaluate", f"--ckpt={damaged}", "--task=text",
                              f"--data={tmp / 'absent.jsonl'}"], cls.damaged_file),
        "to_hf_damaged_workdir": (["-m", "llava_jax.convert", "to-hf",
                                   f"--ckpt={tmp / 'workdir'}", f"--out={out}"],
                                  cls.workdir_file),
        "to_hf_missing": (["-m", "llava_jax.convert", "to-hf", f"--ckpt={tmp / 'absent'}",
                           f"--out={out}"], "absent"),
        "to_peft_damaged_workdir": (["-m", "llava_jax.convert", "to-peft",
                                     f"--ckpt={tmp / 'lora_workdir'}", f"--out={out}"],
                                    cls.lora_file),
        "to_peft_not_lora": (["-m", "llava_jax.convert", "to-peft", f"--ckpt={tmp / 'workdir'}",
                              f"--out={out}"], "not a LoRA training workdir"),
    }
    with concurrent.futures.ThreadPoolExecutor(2) as pool:   # the machine has 2 cores
      cls.results = dict(zip(cls.cases, pool.map(_run, [a for a, _ in cls.cases.values()])))
    cls.out = out
    assert tuple(cls.cases) == CASES

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_error_line_without_traceback(self, name):
    proc, named = self.results[name], self.cases[name][1]
    self.assertNotEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertNotIn("Traceback", proc.stderr)
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    self.assertLen(error_lines, 1, proc.stderr[-2000:])
    self.assertIn(named, proc.stderr[proc.stderr.index(error_lines[0]):])
    self.assertFalse(self.out.exists())


if __name__ == "__main__":
  absltest.main()
