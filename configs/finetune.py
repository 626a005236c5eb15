"""Stage 2, visual instruction tuning: projector and LLM train, the vision tower stays frozen.

    python -m llava_jax.main --config=configs/finetune.py[:PRESET] [--config.FIELD=VALUE ...]

Presets: demo (default; tiny model from scratch on data/demo, a few minutes on 2 CPU cores),
llava_v1_7b, llava15_7b, llava15_13b with LLaVA's recipes: lr 2e-5, global batch 128, 1 epoch
(v1: 3), warmup 3% + cosine, bf16, max length 2048. They start from the base model directory
(`init.params_from`) and take the projector of the stage-1 run (`init.projector_from`).
"""

import os

from llava_jax.config import schema
from llava_jax.config import training

# LLaVA-1.5 pads images to a square (the data schema's default); v1 center-crops.
RECIPES = {
    "demo": training.Recipe(lr=1e-3, batch_size=8, epochs=1,
                            data_path=os.path.join(schema.DEMO_DIR, "finetune.json"),
                            image_dir=os.path.join(schema.DEMO_DIR, "images")),
    "llava_v1_7b": training.Recipe(lr=2e-5, batch_size=128, epochs=3, image_aspect="crop",
                                   data_path="data/llava/llava_instruct_158k.json",
                                   image_dir="data/llava/coco/train2017"),
    "llava15_7b": training.Recipe(lr=2e-5, batch_size=128, epochs=1,
                                  data_path="data/llava/llava_v1_5_mix665k.json",
                                  image_dir="data/llava/images"),
    "llava15_13b": training.Recipe(lr=2e-5, batch_size=128, epochs=1,
                                   data_path="data/llava/llava_v1_5_mix665k.json",
                                   image_dir="data/llava/images"),
}


def get_config(preset: str = "demo"):
  demo = preset == "demo"
  return training.stage_config(
      preset, RECIPES[preset], steps=400 if demo else 0, trainable=("projector/.*", "llm/.*"),
      data=dict(template="vicuna_v1"),
      # The demo trains from scratch so it needs nothing but this repository.
      params_from="" if demo else f"models/{preset}-base",
      projector_from="" if demo else f"workdir/pretrain-{preset}")
