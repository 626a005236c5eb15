"""The Flax LLaVA model: parameter tree, masks, KV cache, image merge, remat, dtype, sharding."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.config import schema
from llava_jax.model import llava as llava_lib
import tiny

IMAGE = 4
LOGICAL_NAMES = {"layers", "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim",
                 "vision_embed", "vision_mlp", "vision_heads", "vision_patch", "vision_pos"}


def small_cfg(**llm):
  """The tiny preset with a 16-token image (32 px), so sequences stay short."""
  return tiny.model_config(image_size=32, **llm)


def batch(cfg, rng, t_text=12):
  """Row 0: two images; row 1: left padding + one image; row 2: text only, right padding."""
  n = schema.num_image_tokens(cfg)
  t = 2 * n + t_text
  ids = rng.integers(5, cfg.llm.vocab_size, (3, t)).astype(np.int32)
  seg = np.ones((3, t), np.int32)
  ids[0, 1:1 + n] = IMAGE
  ids[0, 3 + n:3 + 2 * n] = IMAGE
  seg[1, :5] = 0
  ids[1, 6:6 + n] = IMAGE
  seg[2, t - 6:] = 0
  ids[seg == 0] = 3
  pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
  s = cfg.vision.image_size
  pixels = rng.standard_normal((3, 2, s, s, 3)).astype(np.float32)
  pixels[1, 1] = pixels[2] = 0
  return ids, seg, pos, pixels


class ModelTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cfg = small_cfg()
    cls.model = model_lib.build(cls.cfg)
    cls.ids, cls.seg, cls.pos, cls.pixels = batch(cls.cfg, np.random.default_rng(0))
    cls.boxed = cls.model.init(jax.random.key(0), cls.ids, cls.pixels)
    cls.params = model_lib.unbox(cls.boxed)
    cls.apply = staticmethod(jax.jit(cls.model.apply, static_argnames=("method", "return_hidden")))
    cls.logits = cls.apply(cls.params, cls.ids, cls.pixels, cls.seg, cls.pos)

  def test_parameter_tree_follows_the_contract(self):
    p = self.params["params"]
    v, t = self.cfg.vision, self.cfg.llm
    dh = v.width // v.heads
    expected = {
        "vision/patch_embed": (8, 8, 3, 64), "vision/class_embed": (64,),
        "vision/pos_embed": (17, 64), "vision/pre_norm/scale": (64,),
        "vision/layers/attn/q/kernel": (v.layers, 64, v.heads, dh),
        "vision/layers/attn/q/bias": (v.layers, v.heads, dh),
        "vision/layers/attn/o/kernel": (v.layers, v.heads, dh, 64),
        "vision/layers/mlp/fc1/kernel": (v.layers, 64, v.mlp_dim),
        "vision/layers/norm2/bias": (v.layers, 64), "vision/post_norm/bias": (64,),
        "projector/linear_0/kernel": (64, t.dim), "projector/linear_1/kernel": (t.dim, t.dim),
        "projector/linear_1/bias": (t.dim,),
        "llm/embed/embedding": (t.vocab_size, t.dim),
        "llm/layers/attn_norm/scale": (t.layers, t.dim),
        "llm/layers/attn/q/kernel": (t.layers, t.dim, t.heads, t.head_dim),
        "llm/layers/attn/k/kernel": (t.layers, t.dim, t.kv_heads, t.head_dim),
        "llm/layers/attn/o/kernel": (t.layers, t.heads, t.head_dim, t.dim),
        "llm/layers/mlp/down/kernel": (t.layers, t.mlp_dim, t.dim),
        "llm/final_norm/scale": (t.dim,), "llm/lm_head/kernel": (t.dim, t.vocab_size),
    }
    flat = {"/".join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]}
    for path, shape in expected.items():
      self.assertEqual(flat.get(path), shape, path)
    self.assertLen(flat, 23 + 4 + 12)  # vision, projector, llm leaves

  def test_every_parameter_has_logical_axes(self):
    leaves = jax.tree_util.tree_leaves(self.boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for leaf in leaves:
      self.assertIsInstance(leaf, nn.LogicallyPartitioned)
      self.assertLen(leaf.names, leaf.value.ndim)
      self.assertContainsSubset(set(leaf.names), LOGICAL_NAMES)

  def test_sharded_on_8_devices_matches_unsharded(self):
    mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
    rows = np.array([0, 1, 2, 0])  # The batch splits over data * fsdp = 4 devices.
    rules = sharding.LOGICAL_AXIS_RULES
    abstract = sharding.abstract_params(self.model, mesh, rules)
    params = jax.device_put(self.params, {"params": jax.tree.map(lambda x: x.sharding, abstract)})
    kernel = params["params"]["llm"]["layers"]["mlp"]["gate"]["kernel"]
    self.assertEqual(kernel.sharding.spec, jax.sharding.PartitionSpec(None, "fsdp", "tensor"))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      logits = jax.jit(self.model.apply)(params, self.ids[rows], self.pixels[rows],
                                         self.seg[rows], self.pos[rows])
    np.testing.assert_allclose(logits, self.logits[rows], atol=1e-5)

  def test_image_runs_take_their_pixels_in_order(self):
    embeds = self.apply(self.params, self.ids, self.pixels, method=llava_lib.Llava.embed)
    images = self.apply(self.params, self.pixels, method=llava_lib.Llava.encode_images)
    text = self.apply(self.params, self.ids, None, method=llava_lib.Llava.embed)
    n = schema.num_image_tokens(self.cfg)
    np.testing.assert_array_equal(embeds[0, 1:1 + n], images[0, 0])
    np.testing.assert_array_equal(embeds[0, 3 + n:3 + 2 * n], images[0, 1])
    np.testing.assert_array_equal(embeds[1, 6:6 + n], images[1, 0])
    is_text = self.ids != IMAGE
    np.testing.assert_array_equal(np.asarray(embeds)[is_text], np.asarray(text)[is_text])
    self.assertFalse(np.allclose(images[0, 0], images[0, 1]))

  def test_text_only_row_ignores_its_pixels(self):
    pixels = self.pixels.copy()
    pixels[2] = 5.0
    pixels[1, 1] = 5.0  # Row 1 has one image run: its second image slot is unused too.
    logits = self.apply(self.params, self.ids, pixels, self.seg, self.pos)
    np.testing.assert_array_equal(logits[1:], self.logits[1:])

  def test_padding_does_not_change_real_tokens(self):
    # Row 1 without its left padding gives the same logits for its real tokens.
    real = self.seg[1] > 0
    ids = self.ids[1][real][None]
    logits = self.apply(self.params, ids, self.pixels[1:2])
    np.testing.assert_allclose(logits[0], self.logits[1][real], atol=1e-5)

  def test_packed_samples_do_not_see_each_other(self):
    ids_a, ids_b = self.ids[2, :10], self.ids[0, :30]
    packed = np.concatenate([ids_a, ids_b])[None]
    seg = np.array([[1] * 10 + [2] * 30], np.int32)
    pos = np.array([list(range(10)) + list(range(30))], np.int32)
    pixels = self.pixels[:1]  # ids_b's image run reads image 0: the packed row's first image.
    logits = self.apply(self.params, packed, pixels, seg, pos)
    alone_a = self.apply(self.params, ids_a[None], None)
    alone_b = self.apply(self.params, ids_b[None], pixels)
    np.testing.assert_allclose(logits[0, :10], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 10:], alone_b[0], atol=1e-5)

  def test_kv_cache_prefill_then_decode_matches_full_forward(self):
    steps, t = 3, self.ids.shape[1]
    rows = np.array([0, 1])  # Left-padded batch: row 1 has padding at the front.
    ids, seg, pos, pixels = self.ids[rows], self.seg[rows], self.pos[rows], self.pixels[rows]
    new_tokens = np.random.default_rng(1).integers(5, 100, (2, steps)).astype(np.int32)
    cache = self.model.init_cache(2, t + steps + 2)
    logits, cache = self.apply(self.params, ids, pixels, seg, pos, cache)
    valid = seg > 0  # Padding queries attend to nothing; their outputs are unused.
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(self.logits[rows])[valid],
                               atol=1e-5)
    decode = jax.jit(functools.partial(self.model.apply, method=llava_lib.Llava.decode))
    next_pos = pos[:, -1:] + 1
    stepped = []
    for i in range(steps):
      out, cache = decode(self.params, new_tokens[:, i:i + 1], next_pos + i, cache)
      stepped.append(out[:, 0])
    self.assertEqual(int(cache["index"]), t + steps)
    full_ids = np.concatenate([ids, new_tokens], 1)
    full_seg = np.concatenate([seg, np.ones((2, steps), np.int32)], 1)
    full_pos = np.concatenate([pos, next_pos + np.arange(steps)], 1)
    full = self.apply(self.params, full_ids, pixels, full_seg, full_pos)
    np.testing.assert_allclose(np.stack(stepped, 1), full[:, t:], atol=1e-5)

  def test_hidden_states_then_lm_logits_equal_logits(self):
    hidden = self.apply(self.params, self.ids, self.pixels, self.seg, self.pos, return_hidden=True)
    chex.assert_shape(hidden, (3, self.ids.shape[1], self.cfg.llm.dim))
    logits = self.apply(self.params, hidden, method=llava_lib.Llava.lm_logits)
    np.testing.assert_allclose(logits, self.logits, atol=1e-5)

  def test_vision_computes_only_the_layers_it_needs(self):
    params = jax.tree_util.tree_map(np.array, self.params)
    for leaf in jax.tree_util.tree_leaves(params["params"]["vision"]["layers"]):
      leaf[-1] = np.nan  # Poison the last encoder layer, which feature_layer=-2 must not run.
    feats = self.apply(params, self.pixels, method=llava_lib.Llava.encode_images)
    self.assertTrue(np.isfinite(feats).all())
    cfg = small_cfg()
    cfg.vision.feature_layer = -1
    feats = model_lib.build(cfg).apply(params, self.pixels, method=llava_lib.Llava.encode_images)
    self.assertTrue(np.isnan(feats).all())

  def test_bfloat16_compute_keeps_float32_params_and_logits(self):
    cfg = small_cfg()
    cfg.dtype = "bfloat16"
    model = model_lib.build(cfg)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(sharding.abstract_params(model))}
    self.assertEqual(dtypes, {jnp.dtype("float32")})
    logits = jax.jit(model.apply)(self.params, self.ids, self.pixels, self.seg, self.pos)
    self.assertEqual(logits.dtype, jnp.float32)
    valid = self.seg > 0
    err = np.abs(np.asarray(logits) - np.asarray(self.logits))[valid].max()
    self.assertLess(err, 0.05 * np.abs(np.asarray(self.logits)[valid]).max())
    self.assertGreater(err, 0)  # It really computed in bfloat16.

  def test_remat_policies_give_identical_gradients(self):
    def loss(model, params):
      logits = model.apply(params, self.ids[:1], self.pixels[:1], self.seg[:1], self.pos[:1])
      return jnp.mean(jax.nn.logsumexp(logits, -1))

    grads = {}
    for policy in ("none", "dots", "full"):  # Small batch: three backward compiles.
      cfg = small_cfg()
      cfg.remat = policy
      grads[policy] = jax.jit(jax.grad(functools.partial(loss, model_lib.build(cfg))))(
          self.params)
    chex.assert_trees_all_close(grads["dots"], grads["none"], atol=1e-6)
    chex.assert_trees_all_close(grads["full"], grads["none"], atol=1e-6)
    self.assertGreater(float(jnp.abs(grads["none"]["params"]["vision"]["layers"]["attn"]["q"]
                                     ["kernel"]).max()), 0)

  def test_scan_unroll_changes_the_program_not_the_gradients(self):
    def loss(model, params):
      logits = model.apply(params, self.ids[:1], self.pixels[:1], self.seg[:1], self.pos[:1])
      return jnp.mean(jax.nn.logsumexp(logits, -1))

    cfg = small_cfg()
    layers = cfg.llm.layers
    self.assertEqual(model_lib.model_dataclass(cfg).scan_unroll, layers)  # 0 = auto; CPU here.
    grads, loops = {}, {}
    for unroll in (1, layers):
      cfg.scan_unroll = unroll
      model = model_lib.build(cfg)
      loops[unroll] = jax.jit(functools.partial(loss, model)).lower(self.params).as_text().count(
          "stablehlo.while")
      grads[unroll] = jax.jit(jax.grad(functools.partial(loss, model)))(self.params)
    self.assertEqual(loops[1], loops[layers] + 1)  # The decoder's loop is gone when unrolled.
    chex.assert_trees_all_close(grads[layers], grads[1], atol=1e-6)

  def test_tied_embeddings_have_no_lm_head(self):
    cfg = small_cfg(tie_embeddings=True)
    model = model_lib.build(cfg)
    params = model_lib.unbox(model.init(jax.random.key(0), self.ids, self.pixels))
    self.assertNotIn("lm_head", params["params"]["llm"])
    hidden = model.apply(params, self.ids, self.pixels, return_hidden=True)
    logits = model.apply(params, self.ids, self.pixels)
    embedding = params["params"]["llm"]["embed"]["embedding"]
    np.testing.assert_allclose(logits, jnp.einsum("btd,vd->btv", hidden, embedding), atol=1e-5)


class StructureTest(parameterized.TestCase):

  def test_scan_keeps_the_program_size_independent_of_depth(self):
    sizes = []
    for layers in (2, 6):
      cfg = small_cfg(layers=layers)
      cfg.vision.layers = layers
      model = model_lib.build(cfg)
      ids = jnp.zeros((1, 20), jnp.int32)
      pixels = jnp.zeros((1, 1, 32, 32, 3))
      params = {"params": sharding.abstract_params(model)}
      jaxpr = jax.make_jaxpr(model.apply)(params, ids, pixels)
      sizes.append(len(str(jaxpr).splitlines()))
    self.assertEqual(sizes[0], sizes[1])

  @parameterized.parameters("tiny", "llava_v1_7b", "llava15_7b", "llava15_13b")
  def test_presets_build_with_the_expected_size(self, preset):
    cfg = schema.model_config(preset)
    model = model_lib.build(cfg)
    count = sum(x.size for x in jax.tree_util.tree_leaves(sharding.abstract_params(model)))
    low, high = {"tiny": (1e6, 3e6), "llava_v1_7b": (7.0e9, 7.1e9),
                 "llava15_7b": (7.0e9, 7.1e9), "llava15_13b": (13.3e9, 13.4e9)}[preset]
    self.assertBetween(count, low, high)

  @parameterized.parameters(("projector", "mlp", "model.projector"),
                            ("remat", "some", "model.remat"),
                            ("attention", "flash", "model.attention"),
                            ("scan_unroll", -1, "model.scan_unroll"))
  def test_bad_config_values_are_named(self, field, value, message):
    cfg = small_cfg()
    cfg[field] = value
    model = model_lib.build(cfg)
    with self.assertRaisesRegex(ValueError, message):
      model_lib.logical_param_shapes(model)

  def test_bad_feature_select_is_named(self):
    cfg = small_cfg()
    cfg.vision.feature_select = "cls"
    model = model_lib.build(cfg)
    with self.assertRaisesRegex(ValueError, "model.vision.feature_select"):
      model_lib.logical_param_shapes(model)


if __name__ == "__main__":
  absltest.main()
