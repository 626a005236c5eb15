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

# preset: (lr, global batch, epochs, LLaVA JSON, image folder, image aspect)
RECIPES = {
    "demo": (1e-3, 8, 1, os.path.join(schema.DEMO_DIR, "finetune.json"),
             os.path.join(schema.DEMO_DIR, "images"), "pad"),
    "llava_v1_7b": (2e-5, 128, 3, "data/llava/llava_instruct_158k.json",
                    "data/llava/coco/train2017", "crop"),
    "llava15_7b": (2e-5, 128, 1, "data/llava/llava_v1_5_mix665k.json", "data/llava/images",
                   "pad"),
    "llava15_13b": (2e-5, 128, 1, "data/llava/llava_v1_5_mix665k.json", "data/llava/images",
                    "pad"),
}


def get_config(preset: str = "demo"):
  lr, batch_size, epochs, path, image_dir, image_aspect = RECIPES[preset]
  demo = preset == "demo"
  return training.stage_config(
      preset, lr=lr, batch_size=batch_size, epochs=epochs, steps=400 if demo else 0,
      trainable=("projector/.*", "llm/.*"),
      data=dict(path=path, image_dir=image_dir, template="vicuna_v1", image_aspect=image_aspect),
      # The demo trains from scratch so it needs nothing but this repository.
      params_from="" if demo else f"models/{preset}-base",
      projector_from="" if demo else f"workdir/pretrain-{preset}")
