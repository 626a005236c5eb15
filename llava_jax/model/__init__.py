"""The LLaVA model (Flax Linen). `build(config.model)` is the only constructor callers need."""

from flax.linen import meta

from llava_jax.model.llama import DecoderConfig, init_cache
from llava_jax.model.llava import Llava, LlavaConfig
from llava_jax.model.vision import VisionConfig


def model_dataclass(model_cfg) -> LlavaConfig:
  """Plain frozen hyperparameters from the ConfigDict `configs.common.model_config(...)`."""
  top = {k: v for k, v in model_cfg.to_dict().items() if k not in ("vision", "llm", "preset")}
  return LlavaConfig(vision=VisionConfig(**model_cfg.vision.to_dict()),
                     llm=DecoderConfig(**model_cfg.llm.to_dict()), **top)


def unbox(tree):
  """Plain arrays from a tree of logically-partitioned (boxed) parameters; others pass through."""
  return meta.unbox(tree)


def build(model_cfg) -> Llava:
  """The Llava module for a model ConfigDict; parameters come from `model.init` or a checkpoint."""
  return Llava(model_dataclass(model_cfg))


__all__ = ["build", "unbox", "model_dataclass", "init_cache", "Llava", "LlavaConfig", "DecoderConfig",
           "VisionConfig"]
