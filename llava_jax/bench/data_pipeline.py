"""Throughput of the whole input pipeline: decode + preprocess + tokenize + batch.

    python -m llava_jax.bench.data_pipeline [--image_size=336] [--workers=0,1,2] [--batch=16] [--batches=20]

Builds a temporary dataset from the demo conversations with photo-sized JPEGs (640x480; COCO,
which LLaVA trains on, is about that size), runs `pipeline.make_train_iterator` with each worker
count and prints samples/s after a warm-up (worker start-up excluded). The model is the tiny
preset with its vision tower at `--image_size` (patch 14: 576 image tokens at 336 px).
"""

import json
import os
import shutil
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from llava_jax.config import schema
from llava_jax.data import pipeline
from llava_jax.data import records


def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Smooth colour gradients plus texture: compresses and decodes like a photograph."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  base = [np.sin(x / rng.uniform(20, 90) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(20, 90))
          for _ in range(3)]
  img = (np.stack(base, -1) * 90 + 128) + rng.normal(0, 12, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def make_bench_data(directory: str, num_images: int = 32, seed: int = 0) -> str:
  """Demo conversations re-pointed at num_images JPEGs in `directory`; returns the JSON path."""
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    Image.fromarray(_photo_like(rng, 480, 640)).save(os.path.join(directory, f"{i}.jpg"),
                                                     quality=90)
  demo = [r.data for r in records.read_records(os.path.join(schema.DEMO_DIR, "finetune.json"))]
  out = []
  for i, rec in enumerate(demo):
    rec = dict(rec)
    if "image" in rec:
      rec["image"] = f"{i % num_images}.jpg"
    out.append(rec)
  path = os.path.join(directory, "bench.json")
  with open(path, "w") as f:
    json.dump(out, f)
  return path


def measure(data_cfg, model_cfg, batch: int, batches: int) -> float:
  """Samples per second of make_train_iterator once every worker has delivered two batches."""
  it = pipeline.make_train_iterator(data_cfg, model_cfg, global_batch_size=batch, seed=0)
  try:
    for _ in range(2 * max(1, data_cfg.num_workers)):   # workers take seconds to start
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batch * batches / (time.perf_counter() - start)
  finally:
    it.close()


def run(image_size: int, workers: list[int], batch: int, batches: int) -> list[dict]:
  model = schema.model_config("tiny")
  model.vision.image_size = image_size
  model.vision.patch_size = 14 if image_size % 14 == 0 else model.vision.patch_size
  directory = tempfile.mkdtemp()
  try:
    data = schema.data_config()
    data.path = make_bench_data(directory)
    data.image_dir = directory
    data.max_len = schema.num_image_tokens(model) + 256
    results = []
    for n in workers:
      data.num_workers = n
      rate = measure(data, model, batch, batches)
      results.append({"image_size": image_size, "workers": n, "samples_per_s": round(rate, 1)})
      print(f"{image_size} px, {n} worker(s): {rate:7.1f} samples/s  (batch {batch}, "
            f"{schema.num_image_tokens(model)} image tokens, max_len {data.max_len})", flush=True)
    return results
  finally:
    shutil.rmtree(directory)


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  run(f.image_size, [int(w) for w in f.workers], f.batch, f.batches)


def define_flags() -> None:
  # Defined only when run as a program, so importing this module defines no global flags.
  flags.DEFINE_integer("image_size", 336, "Vision tower input size.")
  flags.DEFINE_list("workers", ["1", "2"], "Worker counts to measure (0 = in-process).")
  flags.DEFINE_integer("batch", 16, "Batch size.")
  flags.DEFINE_integer("batches", 20, "Timed batches per setting.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
