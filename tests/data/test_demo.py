"""Tests for the shipped demo dataset (data/demo/) and its generator tools.make_demo."""

import filecmp
import json
import os
import re
import tempfile

from absl.testing import absltest
import numpy as np
from transformers import AutoTokenizer

from llava_jax.config import schema
from llava_jax.data import image as image_lib
from llava_jax.data import validate
import tiny
import tools.make_demo as demo

DEMO_DIR = str(tiny.REPO / "data" / "demo")
IMAGES = os.path.join(DEMO_DIR, "images")


def _load(name):
  with open(os.path.join(DEMO_DIR, name)) as f:
    return json.load(f)


class ShippedDemoTest(absltest.TestCase):

  def test_size_and_contents(self):
    total = sum(os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(DEMO_DIR) for f in files)
    self.assertLess(total, 3 * 2**20)
    images = os.listdir(IMAGES)
    self.assertBetween(len(images), 30, 60)
    self.assertTrue(any(f.endswith(".png") for f in images))
    self.assertTrue(any(f.endswith(".jpg") for f in images))

  def test_files_validate_clean_and_images_decode(self):
    for name in ("pretrain.json", "finetune.json"):
      report = validate.validate(os.path.join(DEMO_DIR, name), IMAGES, max_images=1)
      self.assertTrue(report.clean, report.table())
    for file in os.listdir(IMAGES):
      pixels = image_lib.load_image(os.path.join(IMAGES, file))
      self.assertEqual(pixels.dtype, np.uint8)
      self.assertBetween(min(pixels.shape[:2]), 96, 160)

  def test_every_image_is_used_and_exists(self):
    used = {r["image"] for r in _load("pretrain.json") + _load("finetune.json") if "image" in r}
    self.assertEqual(used, set(os.listdir(IMAGES)))

  def test_pretrain_is_llava_stage1_format(self):
    for rec in _load("pretrain.json"):
      self.assertEqual(set(rec), {"id", "image", "conversations"})
      human, gpt = rec["conversations"]
      self.assertEqual((human["from"], gpt["from"]), ("human", "gpt"))
      self.assertTrue(human["value"].startswith("<image>\n") or
                      human["value"].endswith("\n<image>"), rec["id"])
      self.assertNotIn("<image>", gpt["value"])

  def test_finetune_has_llava_three_kinds_and_text_only(self):
    recs = _load("finetune.json")
    kinds = {}
    for rec in recs:
      kind = "text" if "image" not in rec else rec["id"].rsplit("_", 1)[1]
      kinds[kind] = kinds.get(kind, 0) + 1
    self.assertGreaterEqual(kinds["conv"], 30)
    self.assertGreaterEqual(kinds["detail"], 30)
    self.assertGreaterEqual(kinds["complex"], 30)
    self.assertGreaterEqual(kinds["text"], 3)
    multi_turn = [r for r in recs if r["id"].endswith("_conv") and len(r["conversations"]) >= 4]
    self.assertGreaterEqual(len(multi_turn), 10)
    self.assertEqual(len({r["id"] for r in recs}), len(recs))

  def test_tokenizer_special_ids_and_size(self):
    tok = AutoTokenizer.from_pretrained(os.path.join(DEMO_DIR, "tokenizer"))
    expected = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4}
    self.assertEqual({t: tok.convert_tokens_to_ids(t) for t in expected}, expected)
    self.assertEqual((tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id),
                     (0, 1, 2, 3))
    self.assertLessEqual(len(tok), schema.model_config("tiny").llm.vocab_size)
    self.assertEqual(schema.model_config("tiny").image_token_id, 4)
    ids = tok("<image>\nHow many trees are there?").input_ids
    self.assertEqual(ids[:2], [1, 4])
    self.assertEqual(tok.decode(ids[2:]).strip(), "How many trees are there?")

  def test_tokenizer_is_llama_style_and_compact_on_demo_text(self):
    tok = AutoTokenizer.from_pretrained(os.path.join(DEMO_DIR, "tokenizer"))
    pieces = tok.tokenize("The red circle is in the middle.")
    self.assertEqual(pieces[0], "▁The")
    # Unseen characters fall back to bytes instead of <unk>, and round-trip.
    ids = tok("snow ☃ ü", add_special_tokens=False).input_ids
    self.assertNotIn(0, ids)
    self.assertEqual(tok.decode(ids), "snow ☃ ü")
    system = ("A chat between a curious user and an artificial intelligence assistant. The "
              "assistant gives helpful, detailed, and polite answers to the user's questions.")
    self.assertLessEqual(len(tok.tokenize(system)), 26)
    for rec in _load("finetune.json")[:20]:
      for turn in rec["conversations"]:
        text = turn["value"].replace("<image>", "")
        words = len(re.findall(r"\S+", text))
        self.assertLessEqual(len(tok.tokenize(text)), words + 2, text)


class GeneratorTest(absltest.TestCase):

  def test_regeneration_reproduces_shipped_files(self):
    with tempfile.TemporaryDirectory() as out:
      demo.write_demo(out, seed=0)
      for name in ("pretrain.json", "finetune.json", "tokenizer/tokenizer.json",
                   "tokenizer/tokenizer_config.json"):
        self.assertTrue(filecmp.cmp(os.path.join(out, name), os.path.join(DEMO_DIR, name),
                                    shallow=False), name)
      self.assertEqual(sorted(os.listdir(os.path.join(out, "images"))), sorted(os.listdir(IMAGES)))
      for file in os.listdir(IMAGES):
        ours = image_lib.load_image(os.path.join(out, "images", file))
        shipped = image_lib.load_image(os.path.join(IMAGES, file))
        if file.endswith(".png"):
          np.testing.assert_array_equal(ours, shipped, err_msg=file)
        else:  # JPEG bytes may differ across libjpeg builds; the picture may not.
          self.assertLess(np.abs(ours.astype(int) - shipped).mean(), 1.0, file)

  def test_other_seed_gives_other_data(self):
    a, b = demo.build_demo(seed=0), demo.build_demo(seed=1)
    self.assertNotEqual(a.pretrain, b.pretrain)
    self.assertEqual(len(a.pretrain), len(b.pretrain))

  def test_captions_state_what_is_drawn(self):
    # The generator's facts match the pixels: count coloured blobs in shape images.
    from tools.make_demo import scenes
    from tools.make_demo import text
    rng = np.random.default_rng(3)
    for _ in range(10):
      scene = scenes.random_shapes_scene(rng)
      pixels = np.asarray(scenes.draw_shapes(scene))
      for shape in scene.shapes:
        x, y = (int(v) for v in scenes.cell_centre(shape.cell))
        np.testing.assert_array_equal(pixels[y, x], scenes.OBJECT_COLOURS[shape.colour])
      caption = text.shapes_caption(scene)
      for colour in {s.colour for s in scene.shapes}:
        self.assertIn(colour, caption)


if __name__ == "__main__":
  absltest.main()
