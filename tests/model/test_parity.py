"""Numerical parity with transformers' torch LLaVA (tiny random models, float32, CPU).

Also the HF name map: exact round trip, every accepted key layout, and its error messages.
"""

import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from llava_jax import model as model_lib
from llava_jax.config import schema
from llava_jax.convert import hf
from llava_jax.convert import hf_config
from llava_jax.model import vision as vision_lib
import tiny

IMAGE_TOKEN = 5
TOL = 1e-4

# name: (kv_heads, projector, feature_layer, feature_select, extra text-config fields)
CONFIGS = {
    "mha_mlp2x_layer-2_patch": (4, "mlp2x_gelu", -2, "default", {}),
    "gqa_linear_layer-1_clspatch": (2, "linear", -1, "full", {}),
    "gqa_mlp2x_tied_ropescaled": (1, "mlp2x_gelu", -2, "default", dict(
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})),
}


class LinearProjector(torch.nn.Module):
  """LLaVA v1's single-linear projector (llava-hf has none), named like llava-hf's first layer."""

  def __init__(self, vision_dim, dim):
    super().__init__()
    self.linear_1 = torch.nn.Linear(vision_dim, dim)

  def forward(self, x):
    return self.linear_1(x)


def build_hf(kv_heads, projector, feature_layer, strategy, text_extra, seed=0):
  vision = tiny.hf_vision_config()
  # No pad/bos/eos ids: these tests feed raw ids, none of them special.
  text = tiny.hf_text_config(**{
      **dict(vocab_size=96, hidden_size=64, num_key_value_heads=kv_heads, head_dim=16,
             max_position_embeddings=128, pad_token_id=None, bos_token_id=None,
             eos_token_id=None), **text_extra})
  config = transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
      projector_hidden_act="gelu", vision_feature_layer=feature_layer,
      vision_feature_select_strategy=strategy, tie_word_embeddings=text.tie_word_embeddings)
  torch.manual_seed(seed)
  model = transformers.LlavaForConditionalGeneration(config).eval()
  if projector == "linear":
    model.model.multi_modal_projector = LinearProjector(32, 64)
  with torch.no_grad():  # Move norms/biases off 1/0 so a swapped or dropped tensor shows.
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model_cfg = hf_config.from_hf(config)
  model_cfg.projector = projector
  return model, model_cfg


def state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def make_batch(cfg, rng):
  """3 rows: two images + text; left-padded one image; right-padded text only."""
  n = schema.num_image_tokens(cfg)
  t = 2 * n + 12
  ids = rng.integers(6, cfg.llm.vocab_size, (3, t)).astype(np.int32)
  seg = np.ones((3, t), np.int32)
  ids[0, 2:2 + n] = IMAGE_TOKEN
  ids[0, 5 + n:5 + 2 * n] = IMAGE_TOKEN
  pad1 = 7
  seg[1, :pad1] = 0
  ids[1, pad1 + 1:pad1 + 1 + n] = IMAGE_TOKEN
  seg[2, t - 9:] = 0
  ids[seg == 0] = 0
  pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
  size = cfg.vision.image_size
  images = rng.standard_normal((3, size, size, 3)).astype(np.float32)
  pixels = np.zeros((3, 2, size, size, 3), np.float32)
  pixels[0, 0], pixels[0, 1], pixels[1, 0] = images
  return ids, seg, pos, pixels, images


class ParityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    torch.set_grad_enabled(False)
    cls.cases = {}
    for name, spec in CONFIGS.items():
      model, cfg = build_hf(*spec)
      sd = state_dict(model)
      params = hf.hf_to_params(sd.__getitem__, sd.keys(), cfg)
      cls.cases[name] = (model, cfg, sd, jax.tree_util.tree_map(jnp.asarray, params))

  def test_vision_hidden_states_every_layer(self):
    # The vision tower is the same in every case (same seed, built first), so test it once.
    model, cfg, _, params = self.cases["mha_mlp2x_layer-2_patch"]
    images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ref = model.model.vision_tower(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                   output_hidden_states=True).hidden_states
    self.assertLen(ref, cfg.vision.layers + 1)
    checks = [(layer, "cls_patch") for layer in range(len(ref))] + [(-2, "patch"), (-1, "patch")]
    for layer, select in checks:
      vcfg = model_lib.VisionConfig(**{**cfg.vision.to_dict(), "feature_layer": layer,
                                       "feature_select": select})
      ours = jax.jit(vision_lib.VisionTower(vcfg).apply)({"params": params["vision"]}, images)
      want = ref[layer].numpy()[:, 1:] if select == "patch" else ref[layer].numpy()
      np.testing.assert_allclose(ours, want, atol=TOL, rtol=0, err_msg=f"{layer} {select}")

  @parameterized.named_parameters(*[(n, n) for n in CONFIGS])
  def test_decoder_logits_with_padding(self, name):
    model, cfg, _, params = self.cases[name]
    ids, seg, pos, _, _ = make_batch(cfg, np.random.default_rng(2))
    ids = np.where(ids == IMAGE_TOKEN, 7, ids)  # Text only: the decoder on its own.
    ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(seg),
                position_ids=torch.from_numpy(pos).long()).logits.numpy()
    ours = jax.jit(model_lib.build(cfg).apply)({"params": params}, ids, None, seg, pos)
    valid = seg > 0
    np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=TOL, rtol=0)

  @parameterized.named_parameters(*[(n, n) for n in CONFIGS])
  def test_llava_logits_two_images_padding_text_only(self, name):
    model, cfg, _, params = self.cases[name]
    ids, seg, pos, pixels, images = make_batch(cfg, np.random.default_rng(3))
    ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(seg),
                position_ids=torch.from_numpy(pos).long(),
                pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
    apply = jax.jit(model_lib.build(cfg).apply)
    ours = apply({"params": params}, ids, pixels, seg, pos)
    valid = seg > 0
    self.assertEqual(ours.dtype, jnp.float32)
    np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=TOL, rtol=0)
    # The images matter (else the merge could be a no-op and still match).
    no_images = apply({"params": params}, ids, pixels * 0, seg, pos)
    self.assertGreater(float(jnp.abs(no_images - ours)[0].max()), 10 * TOL)

  @parameterized.named_parameters(*[(n, n) for n in CONFIGS])
  def test_round_trip_is_exact(self, name):
    _, cfg, sd, _ = self.cases[name]
    params = hf.hf_to_params(sd.__getitem__, sd.keys(), cfg)
    out = dict(hf.params_to_hf(params, cfg))
    want = {k: v for k, v in sd.items() if not (cfg.llm.tie_embeddings and k == hf.LM_HEAD)}
    self.assertEqual(set(out), set(want))
    for key, value in want.items():
      self.assertEqual(out[key].dtype, value.dtype, key)
      np.testing.assert_array_equal(out[key], value, err_msg=key)

  def test_exported_names_load_into_transformers(self):
    model, cfg, sd, _ = self.cases["mha_mlp2x_layer-2_patch"]
    params = hf.hf_to_params(sd.__getitem__, sd.keys(), cfg)
    fresh = transformers.LlavaForConditionalGeneration(hf_config.to_hf(cfg)).eval()
    result = fresh.load_state_dict(
        {k: torch.from_numpy(v) for k, v in hf.params_to_hf(params, cfg)}, strict=True)
    self.assertEmpty(result.missing_keys)
    ids, seg, pos, pixels, images = make_batch(cfg, np.random.default_rng(4))
    kw = dict(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(seg),
              pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(fresh(**kw).logits.numpy(), model(**kw).logits.numpy())

  def test_every_key_layout_is_accepted(self):
    _, cfg, sd, _ = self.cases["mha_mlp2x_layer-2_patch"]
    expected = hf.hf_to_params(sd.__getitem__, sd.keys(), cfg)
    layouts = {
        "disk_5x": [("model.language_model.", "language_model.model."),
                    ("model.vision_tower.", "vision_tower."), ("model.multi_modal", "multi_modal"),
                    ("lm_head.", "language_model.lm_head.")],
        "disk_4x_vision_model": [("model.language_model.", "language_model.model."),
                                 ("model.vision_tower.", "vision_tower.vision_model."),
                                 ("lm_head.", "language_model.lm_head.")],
        "plain_clip_llama": [("model.language_model.", "model."),
                             ("model.vision_tower.", "vision_model.")],
    }
    for layout, renames in layouts.items():
      renamed = {}
      for key, value in sd.items():
        for old, new in renames:
          if key.startswith(old):
            key = new + key[len(old):]
            break
        renamed[key] = value
      renamed["vision_model.embeddings.position_ids"] = np.arange(17)[None]  # ignored buffer
      got = hf.hf_to_params(renamed.__getitem__, renamed.keys(), cfg)
      chex_equal = jax.tree_util.tree_map(np.array_equal, got, expected)
      self.assertTrue(jax.tree_util.tree_all(chex_equal), layout)

  def test_errors_name_the_key_and_shapes(self):
    _, cfg, sd, _ = self.cases["mha_mlp2x_layer-2_patch"]
    q = "model.language_model.layers.1.self_attn.q_proj.weight"

    def convert(tensors, **kw):
      return hf.hf_to_params(tensors.__getitem__, tensors.keys(), cfg, **kw)

    missing = {k: v for k, v in sd.items() if k != q}
    with self.assertRaisesRegex(ValueError, re.escape(q) + r".*\(64, 64\)"):
      convert(missing)
    extra = {**sd, "model.language_model.layers.9.self_attn.q_proj.weight": sd[q]}
    with self.assertRaisesRegex(ValueError, "unexpected tensor.*layers.9.self_attn"):
      convert(extra)
    wrong = {**sd, q: sd[q][:, :32]}
    with self.assertRaisesRegex(ValueError, re.escape(q) + r".*\(64, 32\).*\(64, 64\)"):
      convert(wrong)
    twice = {**sd, "language_model.model.layers.1.self_attn.q_proj.weight": sd[q]}
    with self.assertRaisesRegex(ValueError, "set twice.*" + re.escape(q)):
      convert(twice)
    no_projector = {k: v for k, v in sd.items() if "multi_modal_projector" not in k}
    got = convert(no_projector, allow_missing=["projector/.*"])
    self.assertNotIn("projector", got)
    self.assertIn("vision", got)

  def test_config_round_trip(self):
    model, cfg, _, _ = self.cases["gqa_mlp2x_tied_ropescaled"]
    back = hf_config.from_hf(hf_config.to_hf(cfg))
    self.assertEqual(back.to_dict(), cfg.to_dict())
    self.assertEqual(back.llm.rope_scaling_factor, 2.0)
    self.assertEqual(back.vision.feature_select, "patch")
    self.assertEqual(hf_config.from_hf(model.config.to_dict()).to_dict(), cfg.to_dict())
    with self.assertRaisesRegex(ValueError, "projector"):
      hf_config.to_hf(self.cases["gqa_linear_layer-1_clspatch"][1])

  def test_llava15_7b_parameter_count_matches_transformers(self):
    cfg = schema.model_config("llava15_7b")
    ours = sum(int(np.prod(s)) for s in hf.param_shapes(cfg).values())
    with torch.device("meta"):
      reference = transformers.LlavaForConditionalGeneration(hf_config.to_hf(cfg))
    theirs = sum(p.numel() for p in reference.parameters())
    self.assertEqual(ours, theirs)
    self.assertBetween(ours, 7.0e9, 7.1e9)


if __name__ == "__main__":
  absltest.main()
