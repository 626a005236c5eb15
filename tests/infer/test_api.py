"""llava_jax.load / preprocess / logits against transformers' LlavaForConditionalGeneration."""

import gc
import pathlib
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np
from PIL import Image
import torch
import transformers

import llava_hf_fixtures as fx
import llava_jax
from llava_jax import sharding
from llava_jax.checkpoint import model_dir
from llava_jax.checkpoint import workdirs
from llava_jax.convert import exporter
from llava_jax.convert import importer
from llava_jax.data import image as image_lib

N = (fx.IMAGE_SIZE // fx.PATCH_SIZE) ** 2   # image tokens per image (CLS dropped)


def _hf_logits(hf_model, input_ids, pixels_NxHxWx3):
  """transformers' logits: each <image> expanded like LlavaProcessor does, right-padded."""
  rows = [sum(([t] * N if t == fx.IMAGE_TOKEN_ID else [t] for t in row), []) for row in input_ids]
  length = max(map(len, rows))
  ids = torch.tensor([r + [3] * (length - len(r)) for r in rows])
  mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
  kwargs = {}
  if len(pixels_NxHxWx3):
    kwargs["pixel_values"] = torch.from_numpy(np.asarray(pixels_NxHxWx3)).permute(0, 3, 1, 2)
  with torch.no_grad():
    logits = hf_model(input_ids=ids, attention_mask=mask, **kwargs).logits.numpy()
  return logits, [len(r) for r in rows]


class LoadTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.hf_model, cls.model = fx.imported_llava(cls.tmp, seed=3)
    rng = np.random.default_rng(0)
    cls.images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
                  rng.integers(0, 256, (64, 48, 3), dtype=np.uint8),
                  rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    # Row 0: two images; row 1: one image; row 2: text only (shorter, so right-padded).
    cls.input_ids = np.array([[1, 20, 4, 30, 4, 40, 41],
                              [1, 50, 60, 4, 70, 80, 81],
                              [1, 90, 91, 92, 93, 94, 95]])

  def test_preprocess_matches_transformers_image_processor(self):
    pixels = self.model.preprocess(self.images)
    self.assertEqual(pixels.shape, (3, fx.IMAGE_SIZE, fx.IMAGE_SIZE, 3))
    self.assertEqual(pixels.dtype, np.float32)
    processor = transformers.AutoImageProcessor.from_pretrained(self.tmp / "hf")
    want = processor(images=[np.asarray(im) for im in self.images],
                     return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(pixels, want, atol=1e-5)

  def test_logits_match_transformers(self):
    pixels = self.model.preprocess(self.images)
    got = self.model.logits(self.input_ids, pixels)
    want, lengths = _hf_logits(self.hf_model, self.input_ids.tolist(), pixels)
    self.assertEqual(got.shape, (3, 7 + 2 * (N - 1), 1088))
    self.assertEqual(lengths, [7 + 2 * (N - 1), 7 + N - 1, 7])
    for row, length in enumerate(lengths):
      np.testing.assert_allclose(got[row, :length], want[row, :length], atol=1e-4, rtol=0)

  def test_llava_hf_directory_loads_directly(self):
    direct = llava_jax.load(self.tmp / "hf")
    pixels = direct.preprocess(self.images[:1])
    ids = self.input_ids[1:2]
    np.testing.assert_array_equal(direct.logits(ids, pixels), self.model.logits(ids, pixels))
    self.assertEqual(direct.tokenizer.convert_tokens_to_ids("<image>"), fx.IMAGE_TOKEN_ID)

  def test_load_keeps_one_copy_of_the_decoder_weights(self):
    gc.collect()
    alive = jax.live_arrays()   # held, so no id below is reused by a new array
    before = {id(a) for a in alive}
    loaded = llava_jax.load(self.tmp / "ours")
    gc.collect()
    new = [a for a in jax.live_arrays() if id(a) not in before]
    layers = loaded.params["llm"]["layers"]
    stacked_shapes = {(len(layers), *x.shape) for x in jax.tree.leaves(layers[0])}
    self.assertEqual([a.shape for a in new if a.shape in stacked_shapes], [])
    self.assertLen(new, len(jax.tree.leaves(loaded.params)))   # nothing else stays alive

  def test_sharded_load_matches(self):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    sharded = llava_jax.load(self.tmp / "ours", mesh=mesh)
    layers = sharded.params["llm"]["layers"]   # split per layer for generation (one copy)
    self.assertLen(layers, 2)
    self.assertEqual(tuple(layers[1]["mlp"]["up"]["kernel"].sharding.spec), ("fsdp", "tensor"))
    pixels = self.model.preprocess(self.images[1:2])
    ids = self.input_ids[1:2]
    np.testing.assert_allclose(sharded.logits(ids, pixels), self.model.logits(ids, pixels),
                               atol=1e-5)

  def test_pad_aspect(self):
    padded = llava_jax.load(self.tmp / "ours", image_aspect="pad")
    image = np.asarray(self.images[0])
    np.testing.assert_array_equal(padded.preprocess([image])[0],
                                  image_lib.preprocess(image, fx.IMAGE_SIZE, "pad"))

  def test_image_count_mismatch_is_an_error(self):
    pixels = self.model.preprocess(self.images[:1])
    with self.assertRaisesRegex(ValueError, "3 <image> ids .* but 1 images"):
      self.model.logits(self.input_ids, pixels)

  def test_bad_image_is_an_error(self):
    with self.assertRaisesRegex(ValueError, r"image 0: expected a PIL image or uint8\[H, W, 3\]"):
      self.model.preprocess([np.zeros((8, 8), np.float32)])


class TrainingWorkdirTest(absltest.TestCase):
  """A workdir as the trainer leaves it: load() and to-hf read its latest committed step."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.hf_model = fx.llava_model(seed=4)
    fx.save_llava_hf(cls.hf_model, cls.tmp / "hf")
    model_cfg = importer.import_llava_hf(cls.tmp / "hf", cls.tmp / "ours")
    params = model_dir.restore_params(cls.tmp / "ours" / "params")["params"]
    config = ml_collections.ConfigDict({
        "model": model_cfg.to_dict(),
        "data": {"tokenizer": str(fx.DEMO_TOKENIZER), "image_aspect": "pad"},
        "checkpoint": {"max_to_keep": 2, "async_save": False}})
    cls.workdir = cls.tmp / "workdir"
    manager = workdirs.make_manager(cls.workdir, config.checkpoint)
    zeros = jax.tree.map(np.zeros_like, params)
    # Step 1 holds zeros; step 2, the latest, holds the real weights.
    for step, tree in ((1, zeros), (2, params)):
      workdirs.save(manager, step, {"step": step, "params": tree, "opt_state": {}}, config)
    manager.wait_until_finished()
    manager.close()
    workdirs.write_config(cls.workdir, config)

  def test_load_reads_latest_step(self):
    model = llava_jax.load(self.workdir)
    self.assertEqual(model.image_aspect, "pad")
    self.assertIsNotNone(model.tokenizer)
    rng = np.random.default_rng(1)
    pixels = model.preprocess([rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)])
    ids = np.array([[1, 11, 4, 12, 13]])
    want, _ = _hf_logits(self.hf_model, ids.tolist(), pixels)
    np.testing.assert_allclose(model.logits(ids, pixels), want, atol=1e-4, rtol=0)

  def test_to_hf_from_workdir_reproduces_tensors(self):
    out = self.tmp / "exported"
    exporter.export_llava_hf(self.workdir, out)
    original, exported = fx.hf_tensors(self.tmp / "hf"), fx.hf_tensors(out)
    self.assertEqual(sorted(exported), sorted(original))
    for key, value in original.items():
      np.testing.assert_array_equal(exported[key], value, err_msg=key)
    self.assertIsNotNone(transformers.AutoProcessor.from_pretrained(out).tokenizer)


if __name__ == "__main__":
  absltest.main()
