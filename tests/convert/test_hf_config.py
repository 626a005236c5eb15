"""hf_config.from_hf: the model config comes from the checkpoint's config alone, not a preset."""

from absl.testing import absltest
import transformers

from llava_jax.config import schema
from llava_jax.convert import hf_config

# Every architecture field differs from each preset's, so a field left at a preset's value shows.
VISION = dict(image_size=40, patch_size=5, hidden_size=48, num_hidden_layers=3,
              num_attention_heads=3, intermediate_size=96, layer_norm_eps=3e-6,
              hidden_act="quick_gelu")
TEXT = dict(vocab_size=1000, hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
            num_key_value_heads=1, head_dim=32, intermediate_size=200,
            max_position_embeddings=300, rms_norm_eps=2e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5e5})


class FromHfTest(absltest.TestCase):

  def test_every_architecture_field_comes_from_the_checkpoint(self):
    hf = transformers.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=999,
                                  vision_feature_layer=-3,
                                  vision_feature_select_strategy="full").to_dict()
    cfg = hf_config.from_hf(hf)
    self.assertEqual(cfg.vision.to_dict(), dict(
        image_size=40, patch_size=5, width=48, layers=3, heads=3, mlp_dim=96,
        layer_norm_eps=3e-6, feature_layer=-3, feature_select="cls_patch"))
    self.assertEqual(cfg.llm.to_dict(), dict(
        vocab_size=1000, dim=96, layers=3, heads=3, kv_heads=1, head_dim=32, mlp_dim=200,
        max_len=300, norm_eps=2e-6, rope_theta=5e5, rope_scaling_factor=1.0,
        tie_embeddings=True))
    self.assertEqual((cfg.preset, cfg.projector, cfg.image_token_id), ("hf", "mlp2x_gelu", 999))
    # The same schema as the presets: same fields, run settings at the schema's defaults.
    preset = schema.model_config("tiny")
    self.assertEqual(set(cfg.to_dict()), set(preset.to_dict()))
    self.assertEqual(set(cfg.vision), set(preset.vision))
    self.assertEqual(set(cfg.llm), set(preset.llm))
    for key in ("dtype", "param_dtype", "remat", "attention", "scan_unroll"):
      self.assertEqual(cfg[key], preset[key], key)

  def test_a_field_missing_from_the_checkpoint_is_named(self):
    hf = transformers.LlavaConfig(vision_config=VISION, text_config=TEXT).to_dict()
    del hf["vision_config"]["patch_size"]
    with self.assertRaisesRegex(ValueError, "no patch_size"):
      hf_config.from_hf(hf)

  def test_a_shape_without_a_preset_must_give_every_field(self):
    with self.assertRaisesRegex(ValueError, "vision_config: no preset and no heads, mlp_dim"):
      schema.vision_config(image_size=40, patch_size=5, width=48, layers=3)
    with self.assertRaisesRegex(ValueError, "llm_config: no preset and no .*vocab_size"):
      schema.llm_config(dim=96)
    with self.assertRaisesRegex(ValueError, "give a preset, or name, vision, llm"):
      schema.model_config(vision=schema.vision_config("tiny"))


if __name__ == "__main__":
  absltest.main()
