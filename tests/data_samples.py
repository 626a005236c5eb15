"""Shared data fixtures for the data tests: small LLaVA records, images and the bad-input cases.

Not a test module; the test files import it (pytest puts tests/ on sys.path).
"""

import io
import json
import os
import tempfile

import numpy as np
from PIL import Image

from llava_jax.config import schema

LONG = " ".join(["The red ball is on the green grass near the blue box."] * 12)


def good_records(n):
  out = []
  for i in range(n):
    if i % 3 == 2:   # text-only records mix in
      out.append({"id": f"good{i}", "conversations": [
          {"from": "human", "value": f"Count to {i}."}, {"from": "gpt", "value": f"Done {i}."}]})
    else:
      out.append({"id": f"good{i}", "image": f"img{i % 4}.png", "conversations": [
          {"from": "human", "value": f"<image>\nWhat is shape {i}?"},
          {"from": "gpt", "value": f"It is a circle number {i}."},
          {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Red."}]})
  return out


def qa(record_id, question, answer="A ball.", **extra):
  return {"id": record_id, **extra, "conversations": [{"from": "human", "value": question},
                                                      {"from": "gpt", "value": answer}]}


# The bad-input cases of the issue, as (record or raw JSONL line, skip kind).
BAD = {
    "missing_image": (qa("bad_missing", "<image>\nWhat?", image="nope.png"), "missing_image"),
    "zero_bytes": (qa("bad_empty", "<image>\nWhat?", image="empty.png"), "empty_image"),
    "gif_named_jpg": (qa("bad_gif", "<image>\nWhat?", image="gif.jpg"), "format_mismatch"),
    "truncated_jpeg": (qa("bad_trunc", "<image>\nWhat?", image="trunc.jpg"), "truncated_image"),
    "malformed_line": ('{"id": "bad_json", "conversations": [', "malformed_json"),
    "no_conversations": ({"id": "bad_noconv", "image": "img0.png"}, "missing_conversations"),
    "unknown_role": ({"id": "bad_role", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}]}, "unknown_role"),
    "image_token_without_image": (qa("bad_noimg", "<image>\nWhat?"), "image_token_without_image"),
    "over_long": (qa("bad_long", "<image>\nTell me everything.", LONG, image="img1.png"),
                  "too_long"),
}


def write_jsonl(path, entries):
  with open(path, "w") as f:
    for e in entries:
      f.write((e if isinstance(e, str) else json.dumps(e)) + "\n")


def write_images(directory):
  rng = np.random.default_rng(0)
  for i in range(4):
    pixels = rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(directory, f"img{i}.png"))
  open(os.path.join(directory, "empty.png"), "wb").close()
  Image.fromarray(pixels).save(os.path.join(directory, "gif.jpg"), format="GIF")
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  with open(os.path.join(directory, "trunc.jpg"), "wb") as f:
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])


def temp_data_dir():
  """A new temporary directory with the sample images in images/; returns (dir, images_dir)."""
  directory = tempfile.mkdtemp()
  images = os.path.join(directory, "images")
  os.makedirs(images)
  write_images(images)
  return directory, images


def data_config(default_path: str, images: str, **overrides):
  """The data tests' config: data.path, data.image_dir, 128 tokens, no Grain workers; then
  `overrides` (any field, data.path too)."""
  d = schema.data_config()
  d.update(dict(path=default_path, image_dir=images, max_len=128, num_workers=0))
  d.update(overrides)
  return d


def assert_resumes_exactly(test, restored, state, want_batches, report) -> None:
  """`restored`, a fresh iterator set to `state`, yields `want_batches` and ends with the same
  skip `report` (exact resume); it is closed afterwards."""
  try:
    restored.set_state(state)
    for want in want_batches:
      got = next(restored)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    test.assertEqual(restored.skip_report(), report)
  finally:
    restored.close()
