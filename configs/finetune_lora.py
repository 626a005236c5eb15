"""Stage 2 with LoRA: adapters on the decoder's linear layers and the projector train; the base
(vision tower, decoder weights, embeddings) stays frozen, without gradients or optimizer state.

    python -m llava_jax.main --config=configs/finetune_lora.py[:PRESET] [--config.FIELD=VALUE ...]

Presets: demo (default; the tiny model on data/demo, a few minutes on 2 CPU cores), llava15_7b,
llava15_13b with LLaVA's `finetune_lora.sh` recipe: rank 128, alpha 256, lr 2e-4, projector lr
2e-5 (`mm_projector_lr`), global batch 128, 1 epoch, warmup 3% + cosine, bf16, frozen base in
bf16. They start from the base model directory (`init.params_from`) and the stage-1 projector
(`init.projector_from`). LLaVA's lora_dropout 0.05 is not applied (no dropout on adapters).
"""

import os

from llava_jax.config import schema
from llava_jax.config import training

# preset: (rank, alpha, lr, projector lr, global batch, LLaVA JSON, image folder)
RECIPES = {
    "demo": (16, 32.0, 3e-3, 1e-3, 8, os.path.join(schema.DEMO_DIR, "finetune.json"),
             os.path.join(schema.DEMO_DIR, "images")),
    "llava15_7b": (128, 256.0, 2e-4, 2e-5, 128, "data/llava/llava_v1_5_mix665k.json",
                   "data/llava/images"),
    "llava15_13b": (128, 256.0, 2e-4, 2e-5, 128, "data/llava/llava_v1_5_mix665k.json",
                    "data/llava/images"),
}


def get_config(preset: str = "demo"):
  if preset not in RECIPES:
    raise ValueError(f"unknown preset {preset!r}; choose one of {tuple(RECIPES)}")
  rank, alpha, lr, projector_lr, batch_size, path, image_dir = RECIPES[preset]
  demo = preset == "demo"
  c = training.stage_config(
      preset, lr=lr, batch_size=batch_size, epochs=1, steps=300 if demo else 0,
      trainable=("projector/.*", "lora/.*/(a|b)"),
      data=dict(path=path, image_dir=image_dir, template="vicuna_v1", image_aspect="pad"),
      params_from="" if demo else f"models/{preset}-base",
      projector_from="" if demo else f"workdir/pretrain-{preset}")
  c.optim.lr_groups = (("projector/.*", projector_lr),)
  c.lora.rank, c.lora.alpha = rank, alpha
  if demo:
    # The demo's base is random: its frozen LM head alone caps the logits (loss stays > 5), so
    # the head gets an adapter too.
    c.lora.targets = c.lora.targets + ("llm/lm_head",)
  if not demo:
    c.lora.base_dtype = "bfloat16"
    c.model.remat = "full"
  return c
