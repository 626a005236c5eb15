"""Hugging Face checkpoints -> our model directory (`from-hf`).

Two sources:
- a llava-hf directory (`LlavaForConditionalGeneration.save_pretrained`), any key layout;
- LLaVA's recipe parts: a CLIP vision checkpoint, a LLaMA/Vicuna checkpoint and optionally the
  stage-1 `mm_projector.bin`. Their keys are renamed to llava-hf names here so that `hf.py`
  stays the only name map between HF and our parameter tree.
Tensors are read one at a time and cast per tensor, so host memory holds one copy of the model.
"""

import logging
import pathlib
import re
from typing import Callable

import ml_collections
import numpy as np
import transformers

from llava_jax.checkpoint import model_dir
from llava_jax.convert import hf
from llava_jax.convert import hf_config
from llava_jax.convert import tensor_files
from llava_jax.infer import prompting
from llava_jax.model import projector as projector_lib

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
# llava-hf pads the vocabulary to a multiple of 64 after adding <image> and <pad> (32064).
VOCAB_MULTIPLE = 64


def _cast(read: Callable[[str], np.ndarray], dtype: str | None) -> Callable[[str], np.ndarray]:
  if dtype is None:
    return read
  return lambda key: read(key).astype(dtype, copy=False)


def _write_model_dir(out, read, keys, model_cfg, tokenizer_src, preprocessor, overwrite, dtype,
                     prompt_settings=None):
  """Converts and saves; shared by both import paths. Nothing lands at `out` on error.

  `prompt_settings`: how the model's prompts are built (default: LLaVA's, vicuna_v1 + front).
  """
  with model_dir.staged_output(out, overwrite) as staging:
    params = hf.hf_to_params(_cast(read, dtype), keys, model_cfg)
    model_dir.save_params(staging / model_dir.PARAMS, params)
    del params
    model_dir.write_config(staging, model_cfg)
    model_dir.write_preprocessor(staging, preprocessor)
    prompting.write_settings(staging, prompt_settings or prompting.default_settings())
    if tokenizer_src is not None:
      tokenizer_src(staging / model_dir.TOKENIZER)
    model_dir.seal(staging, model_cfg)


def _copy_tokenizer_from(directory: pathlib.Path):
  def copy(dst):
    if not model_dir.copy_tokenizer(directory, dst):
      logging.warning("%s: no tokenizer files to copy", directory)
  return copy


def import_llava_hf(hf_dir: str, out: str, *, overwrite: bool = False,
                    dtype: str | None = None) -> ml_collections.ConfigDict:
  """Converts a llava-hf directory into a model directory at `out`; returns the model config."""
  hf_dir = pathlib.Path(hf_dir)
  llava_cfg = transformers.AutoConfig.from_pretrained(hf_dir)
  model_cfg = hf_config.from_hf(llava_cfg)
  reader = tensor_files.TensorReader.from_path(hf_dir)
  _write_model_dir(out, reader.read, reader.keys(), model_cfg, _copy_tokenizer_from(hf_dir),
                   model_dir.find_preprocessor(hf_dir, model_cfg), overwrite, dtype,
                   prompting.read_settings(hf_dir))
  return model_cfg


# --- LLaVA recipe parts: CLIP + LLaMA (+ stage-1 projector) -------------------------------------


def _vision_keys(reader: tensor_files.TensorReader) -> dict[str, str]:
  """llava-hf name -> CLIP name. CLIPModel's text tower and projections are not used."""
  names = {}
  for key in reader.keys():
    if key.startswith("vision_model."):      # CLIPModel, and CLIPVisionModel before transformers 5
      names["vision_tower." + key[len("vision_model."):]] = key
    elif key.split(".")[0] in ("embeddings", "encoder", "pre_layrnorm", "post_layernorm"):
      names["vision_tower." + key] = key      # CLIPVisionModel as transformers 5 saves it
  if not names:
    raise ValueError("vision checkpoint: no CLIP vision tensors (vision_model.* or embeddings.*)")
  return names


def _llm_keys(reader: tensor_files.TensorReader) -> dict[str, str]:
  """llava-hf name -> LlamaForCausalLM name."""
  names = {}
  for key in reader.keys():
    if key.startswith("model.") or key == "lm_head.weight":
      names["language_model." + key] = key
    else:
      raise ValueError(f"llm checkpoint: unexpected tensor {key!r} {reader.shape(key)} "
                       "(expected LlamaForCausalLM names: model.* and lm_head.weight)")
  return names


_PROJECTOR_KEY = re.compile(r"^(?:model\.)?mm_projector\.(?:(\d+)\.)?(weight|bias)$")


def _projector_layers(reader: tensor_files.TensorReader) -> dict[str, str]:
  """llava-hf name -> LLaVA stage-1 name (`model.mm_projector.{0,2}.*`, or unindexed if linear)."""
  names = {}
  for key in reader.keys():
    match = _PROJECTOR_KEY.match(key)
    if not match:
      raise ValueError(f"projector: unexpected tensor {key!r} {reader.shape(key)} "
                       "(expected model.mm_projector.<i>.weight/bias)")
    index = int(match.group(1) or 0)
    if index % 2:
      raise ValueError(f"projector: tensor {key!r} at odd index {index} (GELUs sit there)")
    names[f"multi_modal_projector.linear_{index // 2 + 1}.{match.group(2)}"] = key
  return names


def _fresh_projector(projector: str, vision_dim: int, llm_dim: int, seed: int) -> dict:
  """LLaVA's stage-1 starting point: torch.nn.Linear's default init, U(+-1/sqrt(fan_in))."""
  depth = projector_lib.num_linear_layers(projector)
  rng = np.random.default_rng(seed)
  tensors = {}
  for i in range(depth):
    fan_in = vision_dim if i == 0 else llm_dim
    bound = 1 / np.sqrt(fan_in)
    prefix = f"multi_modal_projector.linear_{i + 1}"
    tensors[prefix + ".weight"] = rng.uniform(-bound, bound, (llm_dim, fan_in)).astype(np.float32)
    tensors[prefix + ".bias"] = rng.uniform(-bound, bound, (llm_dim,)).astype(np.float32)
  return tensors


def _vision_config(path: pathlib.Path) -> transformers.CLIPVisionConfig:
  config = transformers.AutoConfig.from_pretrained(path)
  return getattr(config, "vision_config", config)   # CLIPConfig nests it


def import_components(vision: str, llm: str, out: str, *, projector: str | None = None,
                      projector_type: str = "mlp2x_gelu", feature_layer: int = -2,
                      feature_select: str = "patch", overwrite: bool = False,
                      dtype: str | None = None, seed: int = 0) -> ml_collections.ConfigDict:
  """CLIP + LLaMA (+ stage-1 projector) -> model directory, as LLaVA builds its model.

  The LLaMA tokenizer gets `<image>` (and `<pad>` if missing) appended; the embedding and output
  rows are extended to a multiple of 64 with the mean embedding, as llava-hf's conversion does.
  Without `projector`, the projector is freshly initialised (LLaVA's stage-1 starting point).
  """
  vision_dir, llm_dir = pathlib.Path(vision), pathlib.Path(llm)
  vision_reader = tensor_files.TensorReader.from_path(vision_dir)
  llm_reader = tensor_files.TensorReader.from_path(llm_dir)
  sources = {k: (vision_reader, v) for k, v in _vision_keys(vision_reader).items()}
  sources.update({k: (llm_reader, v) for k, v in _llm_keys(llm_reader).items()})

  llama_cfg = transformers.AutoConfig.from_pretrained(llm_dir)
  vision_cfg = _vision_config(vision_dir)
  fresh = {}
  if projector is not None:
    projector_reader = tensor_files.TensorReader.from_path(projector)
    names = _projector_layers(projector_reader)
    sources.update({k: (projector_reader, v) for k, v in names.items()})
    projector_type = projector_lib.kind_of(len(names) // 2)
  else:
    logging.warning("no --projector: the projector is freshly initialised (seed %d)", seed)
    fresh = _fresh_projector(projector_type, vision_cfg.hidden_size, llama_cfg.hidden_size, seed)

  tokenizer = transformers.AutoTokenizer.from_pretrained(llm_dir)
  # In llava-hf's order: <image> first (32000 for Vicuna), then <pad>.
  if IMAGE_TOKEN not in tokenizer.get_vocab():
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
  if tokenizer.pad_token is None:
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
  image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
  text_vocab = llama_cfg.vocab_size
  vocab = max(text_vocab, len(tokenizer))
  if vocab > text_vocab:
    vocab = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  llama_cfg.vocab_size = vocab

  llava_cfg = transformers.LlavaConfig(
      vision_config=vision_cfg.to_dict(), text_config=llama_cfg.to_dict(),
      image_token_index=image_token_id, projector_hidden_act="gelu",
      vision_feature_layer=feature_layer,
      vision_feature_select_strategy=hf_config.HF_FEATURE_SELECT[feature_select])
  model_cfg = hf_config.from_hf(llava_cfg)
  with model_cfg.unlocked():
    model_cfg.projector = projector_type

  vocab_keys = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")

  def read(key: str) -> np.ndarray:
    if key in fresh:
      return fresh[key]
    reader, name = sources[key]
    tensor = reader.read(name)
    if key in vocab_keys and tensor.shape[0] < vocab:
      # New rows (for <image>, <pad>, alignment) start at the mean embedding.
      extra = np.broadcast_to(tensor.mean(0, keepdims=True), (vocab - tensor.shape[0],) +
                              tensor.shape[1:])
      tensor = np.concatenate([tensor, extra.astype(tensor.dtype)])
    return tensor

  def save_tokenizer(dst):
    tokenizer.save_pretrained(dst)

  _write_model_dir(out, read, list(sources) + list(fresh), model_cfg, save_tokenizer,
                   model_dir.find_preprocessor(vision_dir, model_cfg), overwrite, dtype)
  return model_cfg
