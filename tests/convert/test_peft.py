"""LoRA interchange with PEFT: our adapters load in `peft.PeftModel` with equal logits, PEFT's and
LLaVA's LoRA checkpoints load in ours, `to-hf --merge_lora` merges."""

import pathlib
import tempfile

from absl.testing import absltest
from flax import traverse_util
import jax
import numpy as np
import peft
import safetensors.numpy
import torch

import llava_hf_fixtures as fx
import llava_jax
from llava_jax import model as model_lib
from llava_jax.checkpoint import sources
from llava_jax.convert import exporter
from llava_jax.convert import peft as peft_lib
from llava_jax.model import lora as lora_lib

N = (fx.IMAGE_SIZE // fx.PATCH_SIZE) ** 2
SEED = 3
DECODER = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _peft_logits(peft_model, input_ids, pixels_NxHxWx3):
  ids = torch.tensor([sum(([t] * N if t == fx.IMAGE_TOKEN_ID else [t] for t in input_ids), [])])
  pixel_values = torch.from_numpy(np.asarray(pixels_NxHxWx3)).permute(0, 3, 1, 2)
  with torch.no_grad():
    return peft_model(input_ids=ids, pixel_values=pixel_values).logits.numpy()


class PeftTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    _, cls.base = fx.imported_llava(cls.tmp, seed=SEED)
    cls.model_cfg = sources.read_model_config(cls.tmp / "ours")
    rng = np.random.default_rng(0)
    cls.pixels = cls.base.preprocess([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)])
    cls.input_ids = [1, 20, fx.IMAGE_TOKEN_ID, 30, 40, 41]

  def _ours(self, adapter):
    model = llava_jax.load(self.tmp / "ours", adapter=adapter)
    return model.logits(np.array([self.input_ids]), self.pixels)

  def _peft(self, directory):
    return _peft_logits(peft.PeftModel.from_pretrained(fx.llava_model(seed=SEED), directory),
                        self.input_ids, self.pixels)

  def _random_adapters(self, patterns=lora_lib.DECODER_TARGETS + ("llm/lm_head",)):
    module = model_lib.build(self.model_cfg)
    targets = lora_lib.select(lora_lib.dense_layers(module, *model_lib.init_inputs(module.cfg)),
                              patterns, 4)
    adapters = model_lib.unbox(lora_lib.init_adapters(jax.random.key(0), targets, 4, 8.0))
    flat = {k: (np.random.default_rng(len(k)).normal(size=v.shape).astype(np.float32) * 0.1
                if k[-1] == "b" else np.asarray(v))
            for k, v in traverse_util.flatten_dict(adapters).items()}
    projector = jax.tree.map(lambda x: np.asarray(x) * 1.5, self.base.params["projector"])
    return traverse_util.unflatten_dict(flat), projector

  def test_exported_adapter_loads_in_peft_with_equal_logits(self):
    adapters, projector = self._random_adapters()
    config, tensors = peft_lib.to_peft(adapters, projector, self.model_cfg)
    directory = self.tmp / "exported"
    directory.mkdir()
    peft_lib.write_peft(directory, config, tensors)
    want = self._peft(directory)
    # Ours, from the same in-memory adapters (not read back), merged into the base.
    base = sources.read_checkpoint(self.tmp / "ours").params
    merged = dict(lora_lib.merge(base, adapters), projector=projector)
    module = model_lib.build(self.model_cfg)
    ids = np.array([sum(([t] * N if t == fx.IMAGE_TOKEN_ID else [t] for t in self.input_ids),
                        [])])
    direct = module.apply({"params": merged}, ids, self.pixels[None])
    np.testing.assert_allclose(direct, want, atol=1e-4, rtol=0)
    base_logits = self.base.logits(np.array([self.input_ids]), self.pixels)
    self.assertGreater(np.abs(want - base_logits).max(), 1e-2)   # the adapter changes logits
    # And read back through llava_jax.load(base, adapter=DIR).
    np.testing.assert_allclose(self._ours(directory), want, atol=1e-4, rtol=0)

  def test_vision_tower_adapters_match_peft(self):
    adapters, projector = self._random_adapters(
        (r"vision/layers/(attn/(q|k|v|o)|mlp/(fc1|fc2))", r"llm/layers/attn/q"))
    config, tensors = peft_lib.to_peft(adapters, projector, self.model_cfg, dropout=0.05)
    self.assertIn("base_model.model.model.vision_tower.encoder.layers.0.self_attn.out_proj."
                  "lora_A.weight", tensors)
    self.assertIn("base_model.model.model.vision_tower.encoder.layers.1.mlp.fc2.lora_B.weight",
                  tensors)
    directory = self.tmp / "vision"
    directory.mkdir()
    peft_lib.write_peft(directory, config, tensors)
    self.assertEqual(peft_lib.read_dropout(directory), 0.05)
    want = self._peft(directory)
    # Vision-only adapters change the logits too (through the image features).
    vision_only = {"vision": adapters["vision"]}
    base_logits = self.base.logits(np.array([self.input_ids]), self.pixels)
    config_v, tensors_v = peft_lib.to_peft(vision_only, None, self.model_cfg)
    vision_dir = self.tmp / "vision_only"
    vision_dir.mkdir()
    peft_lib.write_peft(vision_dir, config_v, tensors_v)
    vision_want = self._peft(vision_dir)
    self.assertGreater(np.abs(vision_want - base_logits).max(), 1e-3)
    np.testing.assert_allclose(self._ours(vision_dir), vision_want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(self._ours(directory), want, atol=1e-4, rtol=0)

  def _peft_made_adapter(self, directory):
    hf_model = fx.llava_model(seed=SEED)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=DECODER,
                             modules_to_save=["multi_modal_projector"])
    model = peft.get_peft_model(hf_model, config)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
      if "lora_B" in name or "modules_to_save" in name:
        with torch.no_grad():
          p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    return directory

  def test_peft_and_llava_lora_checkpoints_import(self):
    directory = self._peft_made_adapter(self.tmp / "from_peft")
    want = self._peft(directory)
    np.testing.assert_allclose(self._ours(directory), want, atol=1e-4, rtol=0)
    # LLaVA's layout: LLaMA module names, the projector in non_lora_trainables.bin.
    llava_dir = self.tmp / "llava_lora"
    llava_dir.mkdir()
    (llava_dir / peft_lib.CONFIG).write_text((directory / peft_lib.CONFIG).read_text())
    tensors = safetensors.numpy.load_file(directory / "adapter_model.safetensors")
    lora, projector = {}, {}
    for key, value in tensors.items():
      if "multi_modal_projector" in key:
        index = 2 * (int(key.split("linear_")[1][0]) - 1)
        projector[f"base_model.model.model.mm_projector.{index}.{key.rsplit('.', 1)[1]}"] = (
            torch.from_numpy(value))
      else:
        lora[key.replace("model.language_model.", "model.")] = value
    safetensors.numpy.save_file(lora, llava_dir / "adapter_model.safetensors")
    torch.save(projector, llava_dir / peft_lib.NON_LORA)
    np.testing.assert_allclose(self._ours(llava_dir), want, atol=1e-4, rtol=0)

  def test_adapter_for_a_base_of_other_shapes_is_refused(self):
    directory = self._peft_made_adapter(self.tmp / "other")
    other = self.model_cfg.copy_and_resolve_references()
    other.llm.mlp_dim = 128
    with self.assertRaisesRegex(ValueError, r"mlp\.(gate|up|down)_proj\.lora_[AB].*has shape"):
      peft_lib.read_adapter_dir(directory, other)

  def test_merged_export_loads_in_transformers(self):
    directory = self._peft_made_adapter(self.tmp / "to_merge")
    want = self._peft(directory)
    out = self.tmp / "merged_hf"
    exporter.export_llava_hf(self.tmp / "ours", out, adapter=directory)
    import transformers  # pylint: disable=g-import-not-at-top
    merged = transformers.LlavaForConditionalGeneration.from_pretrained(out)
    np.testing.assert_allclose(_peft_logits(merged, self.input_ids, self.pixels), want,
                               atol=1e-4, rtol=0)


if __name__ == "__main__":
  absltest.main()
