"""Stage 2 with LoRA: adapters on the decoder's linear layers and the projector train; the base
(vision tower, decoder weights, embeddings) stays frozen, without gradients or optimizer state.

    python -m llava_jax.main --config=configs/finetune_lora.py[:PRESET] [--config.FIELD=VALUE ...]

Presets: demo (default; the tiny model on data/demo, a few minutes on 2 CPU cores), llava15_7b,
llava15_13b with LLaVA's `finetune_lora.sh` recipe: rank 128, alpha 256, lr 2e-4, projector lr
2e-5 (`mm_projector_lr`), global batch 128, 1 epoch, warmup 3% + cosine, bf16, frozen base in
bf16. They start from the base model directory (`init.params_from`) and the stage-1 projector
(`init.projector_from`). Dropout 0.05 on the adapters' inputs (LLaVA's lora_dropout), in training only.
"""

import dataclasses
import os

from llava_jax.config import schema
from llava_jax.config import training


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraRecipe(training.Recipe):
  rank: int
  alpha: float           # adapter output scaled by alpha / rank
  projector_lr: float    # LLaVA's mm_projector_lr
  dropout: float = 0.05  # LLaVA's lora_dropout, on each adapter's input in training


RECIPES = {
    "demo": LoraRecipe(rank=16, alpha=32.0, lr=3e-3, projector_lr=1e-3, batch_size=8, epochs=1,
                       data_path=os.path.join(schema.DEMO_DIR, "finetune.json"),
                       image_dir=os.path.join(schema.DEMO_DIR, "images")),
    "llava15_7b": LoraRecipe(rank=128, alpha=256.0, lr=2e-4, projector_lr=2e-5, batch_size=128,
                             epochs=1, data_path="data/llava/llava_v1_5_mix665k.json",
                             image_dir="data/llava/images"),
    "llava15_13b": LoraRecipe(rank=128, alpha=256.0, lr=2e-4, projector_lr=2e-5, batch_size=128,
                              epochs=1, data_path="data/llava/llava_v1_5_mix665k.json",
                              image_dir="data/llava/images"),
}


def get_config(preset: str = "demo"):
  if preset not in RECIPES:
    raise ValueError(f"unknown preset {preset!r}; choose one of {tuple(RECIPES)}")
  recipe = RECIPES[preset]
  demo = preset == "demo"
  c = training.stage_config(
      preset, recipe, steps=300 if demo else 0, trainable=("projector/.*", "lora/.*/(a|b)"),
      data=dict(template="vicuna_v1"),
      params_from="" if demo else f"models/{preset}-base",
      projector_from="" if demo else f"workdir/pretrain-{preset}")
  c.optim.lr_groups = (("projector/.*", recipe.projector_lr),)
  c.lora.rank, c.lora.alpha, c.lora.dropout = recipe.rank, recipe.alpha, recipe.dropout
  if demo:
    # The demo's base is random: its frozen LM head alone caps the logits (loss stays > 5), so
    # the head gets an adapter too.
    c.lora.targets = c.lora.targets + ("llm/lm_head",)
  if not demo:
    c.lora.base_dtype = "bfloat16"
    c.model.remat = "full"
  return c
