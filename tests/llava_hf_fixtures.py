"""Tiny random Hugging Face checkpoints for the conversion and API tests (built, not downloaded)."""

import json
import pathlib
import shutil

import numpy as np
import safetensors.numpy
import torch
import transformers

import tiny

REPO = tiny.REPO
DEMO_TOKENIZER = REPO / "data" / "demo" / "tokenizer"   # <image> = 4, <pad> = 3, 1025 tokens
IMAGE_TOKEN_ID = 4
IMAGE_SIZE = tiny.HF_IMAGE_SIZE
PATCH_SIZE = tiny.HF_PATCH_SIZE
vision_config = tiny.hf_vision_config   # the sizes live in tests/tiny.py
text_config = tiny.hf_text_config


def llava_model(seed: int = 0, feature_select: str = "default", feature_layer: int = -2,
                **text_overrides) -> transformers.LlavaForConditionalGeneration:
  config = transformers.LlavaConfig(
      vision_config=vision_config().to_dict(), text_config=text_config(**text_overrides).to_dict(),
      image_token_index=IMAGE_TOKEN_ID, projector_hidden_act="gelu",
      vision_feature_layer=feature_layer, vision_feature_select_strategy=feature_select,
      image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2)
  torch.manual_seed(seed)
  model = transformers.LlavaForConditionalGeneration(config).eval()
  # Random init leaves norms at 1/0: perturb every tensor so that a swapped or dropped one shows.
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.02 * torch.randn_like(param))
  return model


def image_processor_settings() -> dict:
  return {
      "image_processor_type": "CLIPImageProcessor", "do_resize": True,
      "size": {"shortest_edge": IMAGE_SIZE}, "do_center_crop": True,
      "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_rescale": True,
      "rescale_factor": 1 / 255, "do_normalize": True,
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True, "resample": 3,
  }


def add_side_files(directory: pathlib.Path):
  """Tokenizer + preprocessor files as a llava-hf repo ships them."""
  for file in DEMO_TOKENIZER.iterdir():
    shutil.copy2(file, directory / file.name)
  (directory / "preprocessor_config.json").write_text(json.dumps(image_processor_settings()))


def save_llava_hf(model, directory: pathlib.Path, max_shard_size=None) -> pathlib.Path:
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(directory, **kwargs)
  add_side_files(directory)
  return directory


def imported_llava(directory: pathlib.Path, seed: int = 0):
  """A tiny random llava-hf model saved to `directory`/hf and imported to `directory`/ours.

  Returns (the transformers model, `llava_jax.load` of the imported directory): the fixture of
  the tests that compare our generation, chat and server against the same weights in torch.
  """
  import llava_jax  # pylint: disable=import-outside-toplevel
  from llava_jax.convert import importer  # pylint: disable=import-outside-toplevel
  hf_model = llava_model(seed=seed)
  save_llava_hf(hf_model, directory / "hf")
  importer.import_llava_hf(directory / "hf", directory / "ours")
  return hf_model, llava_jax.load(directory / "ours")


def rename_to_old_layout(directory: pathlib.Path):
  """Rewrites model.safetensors with the pre-transformers-5 vision names (vision_model.*)."""
  file = directory / "model.safetensors"
  tensors = safetensors.numpy.load_file(file)
  renamed = {}
  for key, value in tensors.items():
    if key.startswith("vision_tower."):
      key = "vision_tower.vision_model." + key[len("vision_tower."):]
    renamed[key] = value
  safetensors.numpy.save_file(renamed, file, metadata={"format": "pt"})


def hf_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of a saved checkpoint (all shards), by name."""
  files = sorted(directory.glob("*.safetensors"))
  out = {}
  for file in files:
    out.update(safetensors.numpy.load_file(file))
  return out
