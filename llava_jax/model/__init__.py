"""The LLaVA model (Flax Linen). `build(config.model)` is the only constructor callers need."""

from flax.linen import meta
import jax
import jax.numpy as jnp

from llava_jax.model.llama import DecoderConfig
from llava_jax.model.llama import init_cache
from llava_jax.model.llava import Llava
from llava_jax.model.llava import LlavaConfig
from llava_jax.model.vision import VisionConfig

PLATFORMS = ("cpu", "gpu", "tpu")


def platform_of(devices) -> str:
  """The platform ('cpu', 'gpu' or 'tpu') of the devices a step or generator is built for."""
  platforms = {d.platform for d in devices}
  if len(platforms) != 1:
    raise ValueError(f"devices of one mesh must share a platform, got {sorted(platforms)}")
  platform = platforms.pop()
  return "gpu" if platform in ("cuda", "rocm") else platform


def model_dataclass(model_cfg, platform: str | None = None) -> LlavaConfig:
  """Plain frozen hyperparameters from the ConfigDict `llava_jax.config.schema.model_config(...)`.

  `platform` is that of the devices the module will run on (a mesh's; for an ahead-of-time
  compile, the target topology's): it picks the layer unroll and whether Pallas kernels run
  compiled (TPU) or interpreted. Default: the local devices' platform.
  """
  platform = platform_of(jax.local_devices()) if platform is None else platform
  if platform not in PLATFORMS:
    raise ValueError(f"platform {platform!r}: expected one of {PLATFORMS}")
  top = {k: v for k, v in model_cfg.to_dict().items() if k not in ("vision", "llm", "preset")}
  if not top.get("scan_unroll"):
    # 0 (auto): XLA:CPU runs the unrolled layer loop faster (its rolled loop zero-fills the
    # stacked per-layer residual buffers, 5-10% of the tiny step); accelerators keep the rolled
    # loop, whose compile time does not grow with depth.
    top["scan_unroll"] = model_cfg.llm.layers if platform == "cpu" else 1
  return LlavaConfig(vision=VisionConfig(**model_cfg.vision.to_dict()),
                     llm=DecoderConfig(**model_cfg.llm.to_dict()), platform=platform, **top)


def unbox(tree):
  """Plain arrays from a tree of logically-partitioned (boxed) parameters; others pass through."""
  return meta.unbox(tree)


def init_inputs(cfg: LlavaConfig) -> tuple[jax.Array, jax.Array]:
  """Smallest inputs that touch every parameter: one image's worth of image tokens."""
  size = cfg.vision.image_size
  input_ids = jnp.full((1, cfg.num_image_tokens), cfg.image_token_id, jnp.int32)
  pixels = jnp.zeros((1, 1, size, size, 3), jnp.float32)
  return input_ids, pixels


def init_params(module: Llava, rng: jax.Array):
  """Freshly initialized parameters of `module`, boxed with their logical axis names."""
  return module.init(rng, *init_inputs(module.cfg))["params"]


def logical_param_shapes(module: Llava):
  """The parameters as boxed ShapeDtypeStructs (nothing is allocated), logical names kept.

  `llava_jax.sharding.abstract_params` turns them into the abstract parameters callers load into.
  """
  return jax.eval_shape(lambda rng: init_params(module, rng), jax.random.key(0))


def build(model_cfg, platform: str | None = None) -> Llava:
  """The Llava module for a model ConfigDict; parameters come from `model.init` or a checkpoint.

  `platform`: of the devices it runs on (see `model_dataclass`); callers with a mesh pass
  `platform_of(mesh.devices.flat)`.
  """
  return Llava(model_dataclass(model_cfg, platform))


__all__ = ["build", "unbox", "init_inputs", "init_params", "logical_param_shapes", "model_dataclass", "platform_of", "PLATFORMS", "init_cache", "Llava", "LlavaConfig",
           "DecoderConfig", "VisionConfig"]
