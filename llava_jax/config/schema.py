"""The config schema's shared pieces: model presets, data, mesh and sharding defaults.

`training.stage_config` assembles these into one locked ConfigDict, and the recipes in the
checkout's `configs/` pick values. Every default lives here or in `training.py`, never in code.
"""

import os

import ml_collections

VISION_PRESETS = {
    # Tiny tower for tests and the CPU demo: 64 px / 8 px patches = 64 patches.
    "tiny": dict(image_size=64, patch_size=8, width=64, layers=2, heads=2, mlp_dim=256),
    "clip_vit_l14_224": dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16,
                             mlp_dim=4096),
    "clip_vit_l14_336": dict(image_size=336, patch_size=14, width=1024, layers=24, heads=16,
                             mlp_dim=4096),
}


def _shape(kind: str, presets: dict, preset: str | None, shape: dict) -> dict:
  """A preset's shape, or (preset None) `shape` alone, which must then give every shape field."""
  if preset is not None:
    return {**presets[preset], **shape}
  if missing := sorted(k for k in next(iter(presets.values())) if shape.get(k) is None):
    raise ValueError(f"{kind}: no preset and no {', '.join(missing)}")
  return dict(shape)


def vision_config(preset: str | None = None, **shape) -> ml_collections.ConfigDict:
  """CLIP ViT hyperparameters (OpenAI CLIP layout): a VISION_PRESETS shape, or with no preset the
  `shape` fields alone (a checkpoint's), then the defaults below unless `shape` sets them."""
  defaults = dict(layer_norm_eps=1e-5,
                  feature_layer=-2,           # LLaVA reads the second-to-last layer.
                  feature_select="patch")     # "patch" drops CLS; "cls_patch" keeps it.
  return ml_collections.ConfigDict({**_shape("vision_config", VISION_PRESETS, preset, shape),
                                    **{k: v for k, v in defaults.items() if k not in shape}})


LLM_PRESETS = {
    "tiny": dict(vocab_size=2048, dim=128, layers=4, heads=4, kv_heads=2, head_dim=32,
                 mlp_dim=352, max_len=512, norm_eps=1e-5),
    # Vicuna v1.5 (LLaMA-2) shapes; vocab padded as in llava-hf (32000 text + <image> + <pad> ...).
    "vicuna_7b": dict(vocab_size=32064, dim=4096, layers=32, heads=32, kv_heads=32, head_dim=128,
                      mlp_dim=11008, max_len=4096, norm_eps=1e-5),
    "vicuna_13b": dict(vocab_size=32064, dim=5120, layers=40, heads=40, kv_heads=40, head_dim=128,
                       mlp_dim=13824, max_len=4096, norm_eps=1e-5),
}


def llm_config(preset: str | None = None, **shape) -> ml_collections.ConfigDict:
  """LLaMA-style decoder hyperparameters: an LLM_PRESETS shape, or with no preset the `shape`
  fields alone (a checkpoint's), then the defaults below unless `shape` sets them."""
  defaults = dict(rope_theta=10000.0,
                  rope_scaling_factor=1.0,    # linear position interpolation; 1.0 = off
                  tie_embeddings=False)
  return ml_collections.ConfigDict({**_shape("llm_config", LLM_PRESETS, preset, shape),
                                    **{k: v for k, v in defaults.items() if k not in shape}})


# name: (vision preset, llm preset, projector, image_token_id)
MODEL_PRESETS = {
    "tiny": ("tiny", "tiny", "mlp2x_gelu", 4),
    "llava_v1_7b": ("clip_vit_l14_224", "vicuna_7b", "linear", 32000),
    "llava15_7b": ("clip_vit_l14_336", "vicuna_7b", "mlp2x_gelu", 32000),
    "llava15_13b": ("clip_vit_l14_336", "vicuna_13b", "mlp2x_gelu", 32000),
}


def model_config(preset: str | None = None, *, name: str | None = None,
                 vision: ml_collections.ConfigDict | None = None,
                 llm: ml_collections.ConfigDict | None = None, projector: str | None = None,
                 image_token_id: int | None = None) -> ml_collections.ConfigDict:
  """The full LLaVA model config: a MODEL_PRESETS name, or (no preset) the architecture given
  alone, e.g. read from a checkpoint, as `name`. The run settings below are the defaults."""
  if preset is not None:
    vision_preset, llm_preset, projector, image_token_id = MODEL_PRESETS[preset]
    vision, llm, name = vision_config(vision_preset), llm_config(llm_preset), preset
  elif None in (vision, llm, projector, image_token_id, name):
    raise ValueError("model_config: give a preset, or name, vision, llm, projector and "
                     "image_token_id")
  c = ml_collections.ConfigDict()
  c.preset = name
  c.vision = vision
  c.llm = llm
  c.projector = projector       # "linear" | "mlp{N}x_gelu"
  c.image_token_id = image_token_id
  c.dtype = "float32"           # compute dtype; "bfloat16" on accelerators
  c.param_dtype = "float32"     # master weights
  c.remat = "none"              # "none" | "dots" | "full"
  c.attention = "xla"           # "xla" (reference) | "cudnn" (GPU) | "splash" (TPU)
  c.scan_unroll = 0             # decoder layers per loop iteration; 0 = all on CPU, 1 elsewhere
  return c


def num_image_tokens(model: ml_collections.ConfigDict) -> int:
  """Tokens each image expands to in the sequence (static): the model's one formula."""
  from llava_jax.model import vision  # pylint: disable=g-import-not-at-top  # keeps this module light
  return vision.image_tokens(model.vision.image_size, model.vision.patch_size,
                             model.vision.feature_select)


def mesh_config() -> ml_collections.ConfigDict:
  """Mesh axis sizes; -1 fills with the remaining devices."""
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


# The demo dataset ships in the repository; absolute paths keep the defaults usable from any cwd.
# They point into the checkout (llava_jax/config/ is two levels below it); an installed wheel has no
# demo set, so runs from one set data.path, data.image_dir and data.tokenizer.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DIR = os.path.join(_REPO_ROOT, "data", "demo")
RECIPE_DIR = os.path.join(_REPO_ROOT, "configs")   # the checkout's training recipes


def data_config() -> ml_collections.ConfigDict:
  """Input pipeline settings (llava_jax.data.pipeline); defaults train on the shipped demo set."""
  c = ml_collections.ConfigDict()
  # LLaVA JSON / JSONL file, or a directory written by `python -m llava_jax.data.prepare`.
  c.path = os.path.join(DEMO_DIR, "finetune.json")
  c.image_dir = os.path.join(DEMO_DIR, "images")  # `image` fields are relative to this folder.
  c.on_error = "skip"           # "skip": count + log bad records; "strict": raise naming it
  c.template = "vicuna_v1"      # "plain" (stage 1) | "vicuna_v1" | "llama_2"
  c.tokenizer = os.path.join(DEMO_DIR, "tokenizer")  # directory of HF tokenizer files
  c.max_len = 256               # tokens per row, padded; the tiny model's 64 image tokens + text
  c.max_images = 1              # M in pixels[B, M, H, W, 3]
  c.image_aspect = "pad"        # "pad" (LLaVA-1.5 expand-to-square) | "crop" (CLIP center crop)
  # Where `<image>` goes in a human turn: "front" (LLaVA's training rule: "<image>\n" + text),
  # "as_written", or "random" (the paper's augmentation, front or after, seeded per record).
  # `plain` drops the question, so it ignores this.
  c.image_placement = "front"
  # Replaces the template's system prompt (vicuna_v1's opening sentence, llama_2's <<SYS>> block);
  # None: the template's own. Stored with the model, so inference uses the same.
  c.system_prompt = ml_collections.config_dict.placeholder(str)
  c.num_workers = 2             # Grain worker processes; 0 = decode in the calling process
  c.worker_buffer_size = 2      # elements each worker prepares ahead
  c.skip_reasons_shown = 5      # how many skip reasons the end-of-epoch report prints
  c.pack = False                # True: first-fit several samples per row (segment ids 1..k)
  return c
