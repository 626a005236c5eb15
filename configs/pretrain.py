"""Stage 1, feature alignment: only the projector trains, on image-caption pairs ('plain' template).

    python -m llava_jax.main --config=configs/pretrain.py[:PRESET] [--config.FIELD=VALUE ...]

Presets: demo (default; tiny model on data/demo), llava_v1_7b, llava15_7b, llava15_13b with
LLaVA's recipes: lr 2e-3 (v1) / 1e-3 (v1.5), global batch 128 / 256, 1 epoch, warmup 3% + cosine,
bf16, max length 2048. The vision tower and LLM start from a model directory made by
`python -m llava_jax.convert from-hf --vision=CLIP_DIR --llm=VICUNA_DIR --out=models/<preset>-base`.
"""

import os

from llava_jax.config import schema
from llava_jax.config import training

# preset: (lr, global batch, epochs, LLaVA JSON, image folder)
RECIPES = {
    "demo": (2e-3, 8, 1, os.path.join(schema.DEMO_DIR, "pretrain.json"),
             os.path.join(schema.DEMO_DIR, "images")),
    "llava_v1_7b": (2e-3, 128, 1, "data/llava/LLaVA-CC3M-Pretrain-595K/chat.json",
                    "data/llava/LLaVA-CC3M-Pretrain-595K/images"),
    "llava15_7b": (1e-3, 256, 1, "data/llava/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                   "data/llava/LLaVA-Pretrain/images"),
    "llava15_13b": (1e-3, 256, 1, "data/llava/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                    "data/llava/LLaVA-Pretrain/images"),
}


def get_config(preset: str = "demo"):
  lr, batch_size, epochs, path, image_dir = RECIPES[preset]
  demo = preset == "demo"
  return training.stage_config(
      preset, lr=lr, batch_size=batch_size, epochs=epochs, steps=300 if demo else 0,
      trainable=("projector/.*",),
      # LLaVA's stage 1 resizes and center-crops (its default 'square' aspect).
      data=dict(path=path, image_dir=image_dir, template="plain", image_aspect="crop"),
      params_from="" if demo else f"models/{preset}-base")
