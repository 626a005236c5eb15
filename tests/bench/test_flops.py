"""Tests for llava_jax/bench/flops.py: FLOP counts against numbers worked out by hand, the peak table."""

from absl.testing import absltest
from absl.testing import parameterized
import jax

from configs import finetune
from llava_jax.bench import flops
from llava_jax.bench import train_step
from llava_jax.config import schema

# The tiny preset, by hand.
# Decoder (D=128, L=4, H=4, KV=2, Dh=32, F=352, V=2048), weights per layer:
#   q,k,v 128·(4+2+2)·32 = 32768; o 4·32·128 = 16384; gate/up/down 3·128·352 = 135168
#   → 184320 · 4 layers = 737280, + LM head 128·2048 = 262144 → N = 999424.
TINY_DECODER_WEIGHTS = 999_424
# Causal attention, one row of T=128, all layers: 4 layers · 4·128²·(4·32)/2 = 16777216.
TINY_ATTENTION_PER_ROW = 16_777_216
# Vision (64 px, 8 px patches → 64 patches + CLS = 65 tokens, width 64, F=256, feature layer -2
# of 2 → 1 layer): patch embedding 2·64·(8·8·3)·64 = 1572864; layer 2·65·(4·64² + 2·64·256)
# = 6389760; attention 4·65²·64 = 1081600 → 9044224 per image.
TINY_VISION_PER_IMAGE = 9_044_224
# Projector mlp2x_gelu: 64·128 + 128·128 = 24576 weights, 64 tokens per image.
TINY_PROJECTOR_WEIGHTS = 24_576


class FlopsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tiny = schema.model_config("tiny")

  def test_tiny_parts_by_hand(self):
    self.assertEqual(flops.decoder_flops_per_token(self.tiny.llm), 2 * TINY_DECODER_WEIGHTS)
    self.assertEqual(flops.decoder_attention_flops_per_row(self.tiny.llm, 128),
                     TINY_ATTENTION_PER_ROW)
    self.assertEqual(sum(flops.vision_forward_flops_per_image(self.tiny.vision)),
                     TINY_VISION_PER_IMAGE)
    self.assertEqual(flops.projector_params(self.tiny), TINY_PROJECTOR_WEIGHTS)
    self.assertEqual(flops.vision_layers_run(self.tiny.vision), 1)

  def test_stage2_step_is_6NT_plus_3x_attention(self):
    f = flops.train_step_flops(self.tiny, batch_size=2, seq_len=128, images_per_row=1,
                               image_tokens=64, train_llm=True, train_projector=True)
    self.assertEqual(f.llm_matmul, 6 * TINY_DECODER_WEIGHTS * 256)       # 1535115264
    self.assertEqual(f.llm_attention, 3 * 2 * TINY_ATTENTION_PER_ROW)    # 100663296
    self.assertEqual(f.projector, 6 * TINY_PROJECTOR_WEIGHTS * 2 * 64)   # 18874368
    self.assertEqual(f.vision, 2 * TINY_VISION_PER_IMAGE)                # frozen: forward only
    self.assertEqual(f.total, 1_535_115_264 + 100_663_296 + 18_874_368 + 18_088_448)
    self.assertEqual(f.as_dict()["total"], f.total)

  def test_stage1_frozen_decoder_pays_forward_and_input_gradient(self):
    f = flops.train_step_flops(self.tiny, batch_size=2, seq_len=128, images_per_row=1,
                               image_tokens=64, train_llm=False, train_projector=True)
    self.assertEqual(f.llm_matmul, 4 * TINY_DECODER_WEIGHTS * 256)
    self.assertEqual(f.llm_attention, 3 * 2 * TINY_ATTENTION_PER_ROW)
    self.assertEqual(f.projector, 6 * TINY_PROJECTOR_WEIGHTS * 2 * 64)

  def test_nothing_trained_is_forward_only(self):
    f = flops.train_step_flops(self.tiny, batch_size=1, seq_len=128, images_per_row=2,
                               image_tokens=64, train_llm=False, train_projector=False)
    self.assertEqual(f.llm_matmul, 2 * TINY_DECODER_WEIGHTS * 128)
    self.assertEqual(f.llm_attention, TINY_ATTENTION_PER_ROW)
    self.assertEqual(f.vision, 2 * TINY_VISION_PER_IMAGE)

  def test_vicuna_7b_counts_llama2_7b_weights(self):
    # LLaMA-2-7B has 6.74e9 weights; the matmuls are all but the input embedding.
    llm = schema.model_config("llava15_7b").llm
    weights = flops.decoder_flops_per_token(llm) / 2 + llm.vocab_size * llm.dim
    self.assertAlmostEqual(weights / 6.74e9, 1.0, delta=0.002)

  @parameterized.parameters(
      ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
      ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
      ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("cpu", None))
  def test_peak_table(self, kind, peak):
    self.assertEqual(flops.table_peak_flops(kind), peak)

  def test_peak_is_measured_where_the_table_has_no_entry(self):
    peak, source = flops.peak_flops(jax.devices("cpu")[0])
    self.assertEqual(source, "measured")
    self.assertBetween(peak, 1e8, 1e14)


class XlaCountTest(absltest.TestCase):

  def test_xla_counts_the_same_for_a_one_layer_decoder_step(self):
    # XLA's cost analysis counts a scanned layer once, so one layer makes the counts comparable.
    config = finetune.get_config("demo")
    config.model.llm.layers = 1
    batch = train_step.synthetic_batch(config.model, batch_size=4, seq_len=128, images_per_row=0)
    setup = train_step.setup_step(config, devices=jax.devices()[:1])
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    compiled = setup.jitted.lower(setup.factory.abstract, abstract_batch,
                                  jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = flops.train_step_flops(config.model, batch_size=4, seq_len=128, images_per_row=0,
                                  image_tokens=64, train_llm=True, train_projector=True)
    # The reference attention computes the whole T×T square: twice the causal count.
    full_square = ours.total + ours.llm_attention
    self.assertBetween(xla_flops / full_square, 0.98, 1.10)   # the rest is elementwise work


if __name__ == "__main__":
  absltest.main()
