"""The LLaVA model (Flax Linen). `build(config.model)` is the only constructor callers need."""

from flax.linen import meta
import jax

from llava_jax.model.llama import DecoderConfig
from llava_jax.model.llama import init_cache
from llava_jax.model.llava import Llava
from llava_jax.model.llava import LlavaConfig
from llava_jax.model.vision import VisionConfig


def model_dataclass(model_cfg) -> LlavaConfig:
  """Plain frozen hyperparameters from the ConfigDict `configs.common.model_config(...)`."""
  top = {k: v for k, v in model_cfg.to_dict().items() if k not in ("vision", "llm", "preset")}
  if not top.get("scan_unroll"):
    # 0 (auto): XLA:CPU runs the unrolled layer loop faster (its rolled loop zero-fills the
    # stacked per-layer residual buffers, 5-10% of the tiny step); accelerators keep the rolled
    # loop, whose compile time does not grow with depth.
    top["scan_unroll"] = model_cfg.llm.layers if jax.default_backend() == "cpu" else 1
  return LlavaConfig(vision=VisionConfig(**model_cfg.vision.to_dict()),
                     llm=DecoderConfig(**model_cfg.llm.to_dict()), **top)


def unbox(tree):
  """Plain arrays from a tree of logically-partitioned (boxed) parameters; others pass through."""
  return meta.unbox(tree)


def build(model_cfg) -> Llava:
  """The Llava module for a model ConfigDict; parameters come from `model.init` or a checkpoint."""
  return Llava(model_dataclass(model_cfg))


__all__ = ["build", "unbox", "model_dataclass", "init_cache", "Llava", "LlavaConfig",
           "DecoderConfig", "VisionConfig"]
