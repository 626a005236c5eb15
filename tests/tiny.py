"""The one home of the tests' tiny models: our configs, a saved model directory, and the
Hugging Face configs of the parity and conversion tests. Every size a test shrinks to is here."""

import os
import pathlib

import jax
import ml_collections
import transformers

from configs import finetune
from configs import finetune_lora
from configs import pretrain
from llava_jax import model as model_lib
from llava_jax.checkpoint import model_dir
from llava_jax.config import schema

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO_TOKENIZER = REPO / "data" / "demo" / "tokenizer"   # <image> = 4, <pad> = 3, 1025 tokens

# Smaller than the "tiny" preset, so a train step compiles in seconds on 2 CPU cores.
TRAIN_VISION = dict(image_size=16, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64)
TRAIN_LLM = dict(vocab_size=2048, dim=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp_dim=128)

# Hugging Face llava-hf sizes (torch models built from these configs, never downloaded).
HF_IMAGE_SIZE = 32
HF_PATCH_SIZE = 8
HF_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                 image_size=HF_IMAGE_SIZE, patch_size=HF_PATCH_SIZE, projection_dim=16)
HF_TEXT = dict(vocab_size=1088, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               rms_norm_eps=1e-5, pad_token_id=3, bos_token_id=1, eos_token_id=2)


def model_config(image_size: int | None = None, **llm) -> ml_collections.ConfigDict:
  """The "tiny" preset; `image_size=32` gives 16-token images, `llm` overrides decoder fields."""
  cfg = schema.model_config("tiny")
  if image_size is not None:
    cfg.vision.image_size = image_size
  cfg.llm.update(llm)
  return cfg


def train_config(stage: str = "finetune", **train) -> ml_collections.ConfigDict:
  """The demo preset of a stage config with a shrunken model and a few steps (unlocked)."""
  config = {"finetune": finetune, "pretrain": pretrain,
            "finetune_lora": finetune_lora}[stage].get_config("demo")
  config.model.vision.update(TRAIN_VISION)
  config.model.llm.update(TRAIN_LLM)
  config.data.max_len = 48
  config.data.num_workers = 0
  config.train.update({**dict(steps=4, batch_size=8, log_every_steps=1), **train})
  config.checkpoint.every_steps = 2
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))   # all (8 fake) devices in tests
  return config


def write_model_dir(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
  """A random model directory `path`/{params/, config.json, tokenizer/, preprocessor_config.json}
  with the demo tokenizer, for the tools that load one (serve, evaluate; its text is nonsense).
  One layer per tower, so that compiling generation stays quick on CPU."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  cfg = model_config()
  cfg.llm.layers = 1
  cfg.vision.layers = 1
  module = model_lib.build(cfg)
  params = model_lib.init_params(module, jax.random.key(seed))
  model_dir.save_params(path / "params", model_lib.unbox(params))
  model_dir.write_config(path, cfg)
  model_dir.copy_tokenizer(DEMO_TOKENIZER, path / "tokenizer")
  model_dir.write_preprocessor(path, model_dir.default_preprocessor(cfg))
  model_dir.seal(path, cfg)
  return path


def hf_vision_config(**overrides) -> transformers.CLIPVisionConfig:
  return transformers.CLIPVisionConfig(**{**HF_VISION, **overrides})


def hf_text_config(**overrides) -> transformers.LlamaConfig:
  return transformers.LlamaConfig(**{**HF_TEXT, **overrides})


class RecordingModel:
  """A chat model whose encode_messages calls are recorded in `seen` (serve and web UI tests)."""

  def __init__(self, model, seen: list):
    self._model, self._seen = model, seen

  def encode_messages(self, messages):
    self._seen.append(messages)
    return self._model.encode_messages(messages)

  def __getattr__(self, name):
    return getattr(self._model, name)
