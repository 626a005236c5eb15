"""The chat CLI: one-shot and interactive sessions (in-process loop and real subprocesses)."""

import io
import os
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

import llava_hf_fixtures as fx
from llava_jax import chat
import tiny

REPO = tiny.REPO


def _write_png(path: pathlib.Path, seed: int) -> pathlib.Path:
  pixels = np.random.default_rng(seed).integers(0, 256, (36, 28, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def _run_cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "llava_jax.chat", *args], input=stdin,
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


class ChatTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    _, cls.model = fx.imported_llava(cls.tmp, seed=1)
    cls.ckpt = str(cls.tmp / "ours")
    cls.image_a = _write_png(cls.tmp / "a.png", 0)
    cls.image_b = _write_png(cls.tmp / "b.png", 1)
    (cls.tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cls.gen = dict(max_new_tokens=10)

  def _answer(self, image_path, question, history=()):
    return self.model.chat(image_path.read_bytes(), question, history=history, **self.gen)

  def test_interactive_loop(self):
    answer_a = self._answer(self.image_a, "What is this?")
    follow_up = self._answer(self.image_a, "Why?", history=[("What is this?", answer_a)])
    answer_b = self._answer(self.image_b, "What is this?")
    session = chat.Session(self.model, chat.read_image(str(self.image_a)), self.gen)
    lines = iter(["What is this?", "Why?", "/reset", "/image /no/such.png", "/bogus",
                  f"/image {self.image_b}", "What is this?", "/quit", "never read"])
    out = io.StringIO()
    writes = []

    def write(text):
      writes.append(text)
      out.write(text)

    chat.interact(session, lambda prompt: next(lines), write)
    text = out.getvalue()
    self.assertIn(f"ASSISTANT: {answer_a}\n", text)
    self.assertIn(f"ASSISTANT: {follow_up}\n", text)  # the second turn saw the first
    self.assertIn(f"ASSISTANT: {answer_b}\n", text)   # /image switched the picture
    self.assertIn("(conversation reset)", text)
    self.assertIn("error: image not found: /no/such.png", text)
    self.assertIn("unknown command /bogus", text)
    self.assertEqual(session.history, [("What is this?", answer_b)])
    self.assertGreater(len(writes), 12)  # answers arrive in pieces (streamed)

  def test_prompt_longer_than_context(self):
    session = chat.Session(self.model, None, self.gen)
    with self.assertRaisesRegex(chat.ChatError, "longer than the model's context"):
      session.ask("word " * 400, lambda _: None)

  def test_cli_one_answer(self):
    done = _run_cli(f"--ckpt={self.ckpt}", f"--image=file://{self.image_a}",
                    "--prompt=What is this?", "--max_new_tokens=10")
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertEqual(done.stdout, self._answer(self.image_a, "What is this?") + "\n")

  def test_cli_interactive(self):
    done = _run_cli(f"--ckpt={self.ckpt}", f"--image={self.image_a}", "--max_new_tokens=10",
                    stdin="What is this?\n/quit\n")
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn(f"ASSISTANT: {self._answer(self.image_a, 'What is this?')}\n", done.stdout)

  def test_cli_errors(self):
    done = _run_cli("--ckpt=/no/such/ckpt", f"--image={self.image_a}", "--prompt=hi")
    self.assertEqual(done.returncode, 2)
    self.assertIn("checkpoint not found: /no/such/ckpt", done.stderr)
    done = _run_cli(f"--ckpt={self.ckpt}", f"--image={self.tmp / 'broken.png'}", "--prompt=hi")
    self.assertEqual(done.returncode, 2)
    self.assertIn("cannot read image", done.stderr)


if __name__ == "__main__":
  absltest.main()
