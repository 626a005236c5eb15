"""inspect: record N as the model sees it, marked spans, image positions, --json."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import ml_collections
import numpy as np

from data_samples import qa
from data_samples import write_images
from data_samples import write_jsonl
from llava_jax.config import schema
from llava_jax.data import inspect
from llava_jax.data import tokenize
import tiny

REPO = str(tiny.REPO)


class InspectTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    write_images(cls.dir)
    cls.path = os.path.join(cls.dir, "data.jsonl")
    write_jsonl(cls.path, [
        qa("text_only", "Is the sky blue?", "Yes, it is blue."),
        qa("with_image", "What is red? <image>", "The ball is red.", image="img0.png"),
        qa("broken", "<image>\nWhat?", image="missing.png"),
    ])
    cls.config = ml_collections.ConfigDict({"seed": 0, "model": schema.model_config("tiny"),
                                            "data": schema.data_config()})
    cls.config.data.update(path=cls.path, image_dir=cls.dir, max_len=128)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def test_plain_text_view_marks_answers_and_images(self):
    text = inspect.describe(self.config, 1, color=False)
    self.assertIn("record with_image (index 1), template vicuna_v1", text)
    self.assertIn("USER: <image x64 @ ", text)
    self.assertIn("ASSISTANT:[[ The ball is red.</s>]]", text)
    # The prompt text as trained: the image moved to the front (LLaVA's rule), answer marked.
    self.assertIn("prompt text (image placement front):\n<s>A chat between", text)
    self.assertIn("USER: <image>\nWhat is red? ASSISTANT:[[ The ball is red.</s>]]\n", text)
    body = text.split("tokens:\n", 1)[1]
    self.assertEqual(body.count("[["), 1)   # only the answer is supervised
    info = inspect.inspect_record(self.config, 1)
    first = info["input_ids"].index(self.config.model.image_token_id)
    self.assertIn(f"tokens: {len(info['input_ids'])} of max_len 128", text)
    self.assertIn(f"images: 1 [{first}..{first + 63}]", text)
    self.assertNotIn("\033[", text)

  def test_colour_on_a_terminal(self):
    text = inspect.describe(self.config, 0, color=True)
    self.assertIn("\033[32m Yes, it is blue.</s>\033[0m", text)
    self.assertNotIn("[[", text.split("\n\n", 1)[1])

  def test_skipped_record_says_why(self):
    self.assertRegex(inspect.describe(self.config, 2, color=False),
                     "broken .*SKIPPED.*missing_image")
    with self.assertRaisesRegex(IndexError, "has 3 records"):
      inspect.inspect_record(self.config, 3)

  def test_json_cli_with_the_finetune_config(self):
    cmd = [sys.executable, "-m", "llava_jax.data.inspect", "--config=configs/finetune.py",
           f"--config.data.path={self.path}", f"--config.data.image_dir={self.dir}", "--index=1",
           "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertEqual(done.returncode, 0, done.stderr)
    got = json.loads(done.stdout)
    self.assertEqual(set(got), {"id", "prompt", "supervised_spans", "input_ids", "labels"})
    self.assertEqual([got["prompt"][s:e] for s, e in got["supervised_spans"]],
                     [" The ball is red.</s>"])
    self.assertEqual(got["id"], "with_image")
    ids, labels = np.asarray(got["input_ids"]), np.asarray(got["labels"])
    supervised = labels != tokenize.IGNORE
    np.testing.assert_array_equal(labels[supervised], ids[supervised])
    tok = tokenize.load_tokenizer(self.config.data.tokenizer)
    self.assertEqual(tok.decode(ids[supervised]), "The ball is red.</s>")
    self.assertEqual(int((ids == self.config.model.image_token_id).sum()), 64)


if __name__ == "__main__":
  absltest.main()
