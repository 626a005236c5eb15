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

_CC3M = "data/llava/LLaVA-CC3M-Pretrain-595K"
_LCS = "data/llava/LLaVA-Pretrain"
# LLaVA's stage 1 resizes and center-crops (its default 'square' aspect).
RECIPES = {
    "demo": training.Recipe(lr=2e-3, batch_size=8, epochs=1, image_aspect="crop",
                            data_path=os.path.join(schema.DEMO_DIR, "pretrain.json"),
                            image_dir=os.path.join(schema.DEMO_DIR, "images")),
    "llava_v1_7b": training.Recipe(lr=2e-3, batch_size=128, epochs=1, image_aspect="crop",
                                   data_path=f"{_CC3M}/chat.json", image_dir=f"{_CC3M}/images"),
    "llava15_7b": training.Recipe(lr=1e-3, batch_size=256, epochs=1, image_aspect="crop",
                                  data_path=f"{_LCS}/blip_laion_cc_sbu_558k.json",
                                  image_dir=f"{_LCS}/images"),
    "llava15_13b": training.Recipe(lr=1e-3, batch_size=256, epochs=1, image_aspect="crop",
                                   data_path=f"{_LCS}/blip_laion_cc_sbu_558k.json",
                                   image_dir=f"{_LCS}/images"),
}


def get_config(preset: str = "demo"):
  demo = preset == "demo"
  return training.stage_config(
      preset, RECIPES[preset], steps=300 if demo else 0, trainable=("projector/.*",),
      data=dict(template="plain"), params_from="" if demo else f"models/{preset}-base")
