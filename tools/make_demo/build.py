"""Assemble the demo dataset: images, stage-1 captions, stage-2 instructions and the tokenizer.

Everything comes from one seeded RNG, so `write_demo(out, seed)` is reproducible byte for byte
(PNG, JSON, tokenizer; JPEG bytes depend only on the Pillow/libjpeg build).
"""

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from tools.make_demo import scenes as scenes_lib
from tools.make_demo import text as text_lib
from tools.make_demo import tokenizer as tokenizer_lib

NUM_SHAPES_IMAGES = 28
# Every (time, ground) pair twice: 12 outdoor images.
OUTDOOR_KINDS = [(t, g) for t in scenes_lib.SKY for g in scenes_lib.GROUNDS] * 2


@dataclasses.dataclass
class Demo:
  images: dict[str, Image.Image]   # file name (relative to images/) -> picture
  pretrain: list[dict]             # LLaVA stage-1 records
  finetune: list[dict]             # LLaVA stage-2 records (three kinds + text-only)


def _with_image(question: str, rng: np.random.Generator) -> str:
  """LLaVA's data puts `<image>\\n` before or `\\n<image>` after the first question."""
  return f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"


def _conversation(qas: list[tuple[str, str]]) -> list[dict]:
  turns = []
  for question, answer in qas:
    turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
  return turns


def _image_records(stem: str, file: str, caption: str, detail: str, questions, reasoning,
                   rng: np.random.Generator) -> tuple[dict, list[dict]]:
  brief = text_lib.BRIEF_INSTRUCTIONS[int(rng.integers(len(text_lib.BRIEF_INSTRUCTIONS)))]
  pretrain = {"id": f"{stem}_caption", "image": file,
              "conversations": _conversation([(_with_image(brief, rng), caption)])}
  picked = rng.choice(len(questions), size=min(len(questions), int(rng.integers(2, 5))),
                      replace=False)
  qas = [questions[int(i)] for i in picked]
  qas[0] = (_with_image(qas[0][0], rng), qas[0][1])
  ask_detail = text_lib.DETAIL_INSTRUCTIONS[int(rng.integers(len(text_lib.DETAIL_INSTRUCTIONS)))]
  finetune = [
      {"id": f"{stem}_conv", "image": file, "conversations": _conversation(qas)},
      {"id": f"{stem}_detail", "image": file,
       "conversations": _conversation([(_with_image(ask_detail, rng), detail)])},
      {"id": f"{stem}_complex", "image": file,
       "conversations": _conversation([(_with_image(reasoning[0], rng), reasoning[1])])},
  ]
  return pretrain, finetune


def build_demo(seed: int = 0) -> Demo:
  rng = np.random.default_rng(seed)
  demo = Demo(images={}, pretrain=[], finetune=[])
  for i in range(NUM_SHAPES_IMAGES):
    scene = scenes_lib.random_shapes_scene(rng)
    stem, file = f"shapes_{i:03d}", f"shapes_{i:03d}.png"
    demo.images[file] = scenes_lib.draw_shapes(scene)
    pretrain, finetune = _image_records(
        stem, file, text_lib.shapes_caption(scene), text_lib.shapes_detail(scene),
        text_lib.shapes_questions(scene, rng), text_lib.shapes_reasoning(scene, rng), rng)
    demo.pretrain.append(pretrain)
    demo.finetune += finetune
  for i, (time, ground) in enumerate(OUTDOOR_KINDS):
    scene = scenes_lib.random_outdoor_scene(rng, time, ground)
    stem, file = f"outdoor_{i:03d}", f"outdoor_{i:03d}.jpg"
    demo.images[file] = scenes_lib.draw_outdoor(scene, rng)
    pretrain, finetune = _image_records(
        stem, file, text_lib.outdoor_caption(scene), text_lib.outdoor_detail(scene),
        text_lib.outdoor_questions(scene), text_lib.outdoor_reasoning(scene, rng), rng)
    demo.pretrain.append(pretrain)
    demo.finetune += finetune
  for i, qas in enumerate(text_lib.TEXT_ONLY):
    demo.finetune.append({"id": f"text_{i:03d}", "conversations": _conversation(qas)})
  return demo


def demo_texts(demo: Demo) -> list[str]:
  return [turn["value"] for rec in demo.pretrain + demo.finetune for turn in rec["conversations"]]


def write_demo(out_dir: str, seed: int = 0) -> Demo:
  """Writes images/, pretrain.json, finetune.json and tokenizer/ under `out_dir`."""
  demo = build_demo(seed)
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  for file, image in demo.images.items():
    path = os.path.join(out_dir, "images", file)
    if file.endswith(".jpg"):
      image.save(path, format="JPEG", quality=90)
    else:
      image.save(path, format="PNG", optimize=True)
  for name, records in (("pretrain.json", demo.pretrain), ("finetune.json", demo.finetune)):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      json.dump(records, f, indent=1, ensure_ascii=False)
      f.write("\n")
  tokenizer = tokenizer_lib.train_tokenizer(demo_texts(demo))
  tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
  return demo
