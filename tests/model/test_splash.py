"""model.attention="splash" (the Pallas TPU kernel, interpreted on CPU) against the xla path."""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.model import splash
import tiny


def tiny_cfg(attention):
  cfg = tiny.model_config(image_size=32, layers=2)   # 16 image tokens
  cfg.attention = attention
  return cfg


def packed_batch(rows=4, length=128, seed=0):
  """Rows of 1-3 packed samples (segments 1..k, positions restart) and right padding."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((rows, length), np.int32)
  for r in range(rows):
    cuts = np.sort(rng.choice(np.arange(6, length - 4), size=r % 3 + 1, replace=False))
    starts = np.concatenate([[0], cuts[:-1]])
    for k, (a, b) in enumerate(zip(starts, cuts)):
      seg[r, a:b] = k + 1
  pos = np.zeros_like(seg)
  for r in range(rows):
    for k in range(1, seg[r].max() + 1):
      pos[r, seg[r] == k] = np.arange((seg[r] == k).sum())
  ids = rng.integers(5, 2048, (rows, length)).astype(np.int32)
  ids[:, 1:17] = 4   # one image (16 tokens) in the first sample of every row
  pixels = rng.standard_normal((rows, 1, 32, 32, 3)).astype(np.float32)
  return jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(seg), jnp.asarray(pos)


class SplashTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ids, cls.pixels, cls.seg, cls.pos = packed_batch()
    xla = model_lib.build(tiny_cfg("xla"))
    cls.params = model_lib.unbox(xla.init(jax.random.key(0), cls.ids[:1], cls.pixels[:1]))
    cls.real = (cls.seg > 0)[:, :, None]

  def loss(self, model, params):
    logits = model.apply(params, self.ids, self.pixels, self.seg, self.pos)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 7] * self.real[..., 0])

  def test_logits_and_gradients_match_the_xla_path_on_packed_rows(self):
    results = {}
    for attention in ("xla", "splash"):
      model = model_lib.build(tiny_cfg(attention))
      logits = jax.jit(model.apply)(self.params, self.ids, self.pixels, self.seg, self.pos)
      grads = jax.jit(jax.grad(functools.partial(self.loss, model)))(self.params)
      results[attention] = (logits * self.real, grads)
    np.testing.assert_allclose(results["splash"][0], results["xla"][0], atol=2e-5)
    chex.assert_trees_all_close(results["splash"][1], results["xla"][1], atol=5e-5, rtol=1e-4)

  def test_sharded_over_rows_and_heads_matches_one_device(self):
    mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=2), jax.devices()[:4])
    model = model_lib.build(tiny_cfg("splash"))
    loss = jax.jit(sharding.with_activation_rules(functools.partial(self.loss, model), mesh))
    placed = jax.device_put(self.params, sharding.replicated(mesh))
    self.assertIn("shard_map", str(jax.make_jaxpr(loss)(placed)))
    want = self.loss(model_lib.build(tiny_cfg("xla")), self.params)
    np.testing.assert_allclose(loss(placed), want, rtol=1e-5)

  def test_lengths_that_do_not_tile_take_the_reference_path(self):
    ids, seg, pos = (x[:, :100] for x in (self.ids, self.seg, self.pos))
    pixels = self.pixels
    logits = {a: model_lib.build(tiny_cfg(a)).apply(self.params, ids, pixels, seg, pos)
              for a in ("xla", "splash")}
    np.testing.assert_array_equal(logits["splash"], logits["xla"])

  def test_sequence_lengths_must_tile(self):
    self.assertEqual(splash.block_size(2048), 512)
    self.assertEqual(splash.block_size(384), 128)
    for bad in (48, 200):
      with self.assertRaisesRegex(ValueError, "data.max_len"):
        splash.block_size(bad)


if __name__ == "__main__":
  absltest.main()
