"""What both LLaVA training stages share: the config skeleton and the per-preset model choices.

The recipes (`configs/pretrain.py`, `finetune.py`, `finetune_lora.py`) call `stage_config(...)`
with their choices (learning rate, batch, epochs, data, which parameters train, where they start
from); everything else defaults here.
"""

import dataclasses

import ml_collections

from llava_jax.config import schema

# Stage-config preset → model preset in schema.py:MODEL_PRESETS.
MODEL_FOR_PRESET = {
    "demo": "tiny",
    "llava_v1_7b": "llava_v1_7b",
    "llava15_7b": "llava15_7b",
    "llava15_13b": "llava15_13b",
}
PRESETS = tuple(MODEL_FOR_PRESET)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
  """What one preset of a stage sets, by name (LLaVA's scripts' values for the big presets)."""
  lr: float                        # peak learning rate
  batch_size: int                  # global
  epochs: int
  data_path: str                   # LLaVA JSON / JSONL, or a `data.prepare` directory
  image_dir: str                   # the records' `image` fields are relative to this folder
  image_aspect: str | None = None  # None: the data schema's default


def stage_config(preset: str, recipe: Recipe, *, trainable: tuple[str, ...], data: dict,
                 steps: int = 0, params_from: str = "",
                 projector_from: str = "") -> ml_collections.ConfigDict:
  """One locked-ready training config from `recipe`; `data` overrides more fields of
  `schema.data_config()` (the stage's template, say)."""
  lr, batch_size, epochs = recipe.lr, recipe.batch_size, recipe.epochs
  data = dict(data, path=recipe.data_path, image_dir=recipe.image_dir)
  if recipe.image_aspect is not None:
    data["image_aspect"] = recipe.image_aspect
  if preset not in MODEL_FOR_PRESET:
    raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
  demo = preset == "demo"
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = schema.model_config(MODEL_FOR_PRESET[preset])
  if not demo:
    c.model.dtype = "bfloat16"   # LLaVA trains in bf16; master weights stay float32.
    c.model.remat = "full"       # LLaVA's gradient_checkpointing=True.

  c.data = schema.data_config()
  c.data.update(data)
  # Every demo sample fits in 192 tokens (64 image tokens + text); LLaVA's recipe is 2048.
  c.data.max_len = 192 if demo else 2048

  c.train = ml_collections.ConfigDict()
  c.train.steps = steps                # > 0 overrides epochs
  c.train.epochs = epochs
  c.train.batch_size = batch_size      # global, over all processes and micro-batches
  c.train.grad_accum_steps = 1         # micro-batches per step (batch_size must divide)
  c.train.on_nonfinite = "stop"        # "stop": raise naming the step | "skip": drop that update
  # 0: cross-entropy from full [B, T, V] logits; N > 0: over chunks of N positions from the
  # final hidden states, never holding all logits (llava_jax/train/loss.py).
  c.train.loss_chunk_len = 0
  c.train.log_every_steps = 1 if demo else 10
  # Resuming with other steps / epochs / batch size / lr / warmup than the checkpoint was saved
  # with stops the run unless this is true (the change is then logged).
  c.train.allow_config_change = False

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = lr                      # peak; linear warmup then cosine decay to 0
  c.optim.warmup_ratio = 0.03
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.mu_dtype = "float32"         # Adam's first moment; "bfloat16" saves 2 bytes/param
  c.optim.grad_clip_norm = 1.0         # HF Trainer's max_grad_norm; <= 0 disables
  # Parameter paths ('/'-joined, e.g. 'llm/layers/mlp/up/kernel') that train; the rest are frozen.
  c.optim.trainable = trainable
  # (regex, peak lr) pairs: matching trainable parameters use their own peak (LLaVA's
  # mm_projector_lr); the schedule's shape is the same. The first match wins.
  c.optim.lr_groups = ()

  # Low-rank adapters (llava_jax/model/lora.py); rank 0 = none (full or stage training).
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0                  # adapter output scaled by alpha / rank
  c.lora.dropout = 0.0                 # PEFT's lora_dropout on each adapter's input, training only
  # Regexes fully matching Dense layer paths that get adapters (LLaVA: every decoder linear).
  c.lora.targets = ("llm/layers/(attn/(q|k|v|o)|mlp/(gate|up|down))",)
  c.lora.base_dtype = "float32"        # frozen base weights' storage dtype; bf16 on accelerators
  # QLoRA: the adapted layers' frozen kernels stored as "int8" | "int4" | "nf4" codes with
  # absmax scales per quant_block values (llava_jax/model/quant.py); "none" keeps base_dtype.
  c.lora.quant = "none"
  c.lora.quant_block = 64

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 200 if demo else 1000   # and always at the end
  c.checkpoint.max_to_keep = 2
  c.checkpoint.async_save = True
  # A damaged newest step (checksum mismatch, missing file) falls back to the newest intact one,
  # with a warning; true refuses instead.
  c.checkpoint.strict_restore = False

  c.mesh = schema.mesh_config()
  if not demo:
    c.mesh.data, c.mesh.fsdp = 1, -1   # 7B/13B: shard params and optimizer state (ZeRO-3).

  c.init = ml_collections.ConfigDict()
  # "" = random init. Else a model directory (`convert from-hf`) or a training workdir.
  c.init.params_from = params_from
  # "" = keep. Else a (stage-1) training workdir whose `projector` replaces ours.
  c.init.projector_from = projector_from
  return c
