"""The README's first commands print nothing a newcomer would take for a fault (issue 18, point 7).

Runs the demo training (two steps, with Grain workers), chat and the export in subprocesses, as a
fresh machine without torch would: torch is hidden from the child processes.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import pytest

import tiny

REPO = tiny.REPO
# What a fresh machine printed before the fix (issue 18).
FAULT_LIKE = ("PyTorch was not found", "leaked shared_memory", "Unable to initialize backend",
              "Traceback", "UserWarning")

# Makes `torch` unfindable, as on a machine that installed only requirements.txt.
_HIDE_TORCH = textwrap.dedent("""
    import sys

    class _HideTorch:
      def __init__(self, finder):
        self.finder = finder

      def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
          return None
        return self.finder.find_spec(name, path, target)

      def __getattr__(self, attr):
        return getattr(self.finder, attr)

    sys.meta_path[:] = [_HideTorch(f) for f in sys.meta_path]
""")


@pytest.mark.integration
class QuietStartTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="quiet_start_"))
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    site = cls.tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_HIDE_TORCH)
    cls.env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    cls.env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])

  def _run(self, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=self.env, capture_output=True,
                          text=True, timeout=600)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return proc

  def assert_quiet(self, proc: subprocess.CompletedProcess):
    for text in FAULT_LIKE:
      self.assertNotIn(text, proc.stderr, proc.stderr[-3000:])

  def test_torch_is_hidden_from_the_children(self):
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=self.env,
                          capture_output=True, text=True, timeout=60)
    self.assertIn("ModuleNotFoundError", proc.stderr)

  def test_demo_chat_and_export_start_quietly(self):
    workdir = self.tmp / "workdir"
    train = self._run("-m", "llava_jax.main", "--config=configs/finetune.py",
                      "--config.train.steps=2", "--config.data.num_workers=2",
                      f"--workdir={workdir}")
    self.assertIn("Training done at step 2", train.stdout)
    self.assert_quiet(train)
    chat = self._run("-m", "llava_jax.chat", f"--ckpt={workdir}",
                     "--image=data/demo/images/shapes_003.png", "--prompt=What is in the image?",
                     "--max_new_tokens=4")
    self.assert_quiet(chat)
    export = self._run("-m", "llava_jax.convert", "to-hf", f"--ckpt={workdir}",
                       f"--out={self.tmp / 'hf'}")
    self.assertTrue((self.tmp / "hf" / "config.json").exists())
    self.assert_quiet(export)

  def test_plain_python_save_and_load_print_nothing(self):
    # A notebook's first cells: save a model directory, load it, answer. Not through a program,
    # so only the library's own edge (llava_jax/__init__.py) and causes fixed there keep it quiet.
    directory = self.tmp / "plain_model"
    script = textwrap.dedent(f"""
        import os
        import jax
        import llava_jax
        from llava_jax.config import schema
        from llava_jax import model as model_lib
        from llava_jax.checkpoint import model_dir
        cfg = schema.model_config("tiny")
        cfg.llm.layers = cfg.vision.layers = 1
        params = model_lib.init_params(model_lib.build(cfg), jax.random.key(0))
        path = {str(directory)!r}
        model_dir.save_params(os.path.join(path, "params"), model_lib.unbox(params))
        model_dir.write_config(path, cfg)
        model_dir.copy_tokenizer(os.path.join(schema.DEMO_DIR, "tokenizer"),
                                 os.path.join(path, "tokenizer"))
        model_dir.write_preprocessor(path, model_dir.default_preprocessor(cfg))
        model_dir.seal(path, cfg)
        model = llava_jax.load(path)
        print(len(model.chat(None, "What is it?", max_new_tokens=2)) >= 0)
    """)
    proc = self._run("-c", script)
    self.assertEqual(proc.stdout.strip(), "True")
    self.assertEqual(proc.stderr, "")


if __name__ == "__main__":
  absltest.main()
