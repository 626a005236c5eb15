"""LLaVA JSON/JSONL + image folder → ArrayRecord shards with the image bytes inside.

    python -m llava_jax.data.prepare --data=llava.json --images=DIR --out=DIR [--num_shards=N]

Training then reads `--config.data.path=DIR` (no image folder needed), so a run never opens
millions of small files. Records keep their source order (shard i holds a contiguous block), so
the pipeline yields the same samples from the shards as from the JSON + folder for the same
seed. Entries that cannot be used are stored anyway (see shards.py) and skipped by the
pipeline with the same record id and reason. Written with `array_record` directly: one record
holds the LLaVA JSON and any number of images, which needs no TFDS feature spec or builder.
The output appears atomically (written to OUT.tmp, then renamed).
"""

import dataclasses
import json
import math
import os
import shutil
import sys

from absl import app
from absl import flags
from array_record.python import array_record_module

from llava_jax.data import records as records_lib
from llava_jax.data import shards

RECORDS_PER_SHARD = 5000


def _stored(entry, image_dir: str) -> tuple[records_lib.Record, int]:
  """(the record with its image files, number of unreadable ones) of one read_records entry."""
  if isinstance(entry, records_lib.BadLine):
    return records_lib.Record(entry.id, None, entry.where, (entry.kind, entry.message), ()), 0
  try:
    names = records_lib.images_of(entry)
  except records_lib.RecordError:
    names = []   # the pipeline reports the bad `image` field from the stored record
  images, missing = [], 0
  for name in names:
    try:
      with open(os.path.join(image_dir, name), "rb") as f:
        images.append(f.read())
    except OSError:
      images.append(None)
      missing += 1
  return dataclasses.replace(entry, images=tuple(images)), missing


def prepare(data: str, image_dir: str, out: str, num_shards: int = 0) -> dict:
  """Writes the shards and dataset_info.json into `out`; returns the info dict.

  Args:
    data: LLaVA JSON list or JSONL file.
    image_dir: folder the records' `image` paths are relative to.
    out: output directory (must not exist yet).
    num_shards: 0 picks one shard per RECORDS_PER_SHARD records.
  """
  if os.path.exists(out):
    raise FileExistsError(f"--out {out!r} already exists; choose a new directory")
  entries = records_lib.read_records(data)
  if not entries:
    raise ValueError(f"{data}: no records")
  num_shards = num_shards or math.ceil(len(entries) / RECORDS_PER_SHARD)
  per_shard = math.ceil(len(entries) / num_shards)
  tmp = out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  names, bad_lines, missing_images, image_bytes = [], 0, 0, 0
  for s in range(num_shards):
    names.append(shards.shard_name(s, num_shards))
    writer = array_record_module.ArrayRecordWriter(os.path.join(tmp, names[-1]), "group_size:1")
    for entry in entries[s * per_shard:(s + 1) * per_shard]:
      stored, missing = _stored(entry, image_dir)
      bad_lines += stored.data is None
      missing_images += missing
      image_bytes += sum(len(b) for b in stored.images if b is not None)
      writer.write(shards.encode(stored))
    writer.close()
  info = {"format": shards.FORMAT, "num_records": len(entries), "shards": names,
          "source": os.path.abspath(data), "image_dir": os.path.abspath(image_dir),
          "unreadable_entries": bad_lines, "unreadable_images": missing_images,
          "image_bytes": image_bytes}
  with open(os.path.join(tmp, shards.INFO_FILE), "w") as f:
    json.dump(info, f, indent=2)
  os.rename(tmp, out)
  return info


def define_flags() -> None:
  # Defined only when run as a program, so importing this module defines no global flags.
  flags.DEFINE_string("data", None, "LLaVA JSON or JSONL file.", required=True)
  flags.DEFINE_string("images", None, "Folder the records' image paths are relative to.",
                      required=True)
  flags.DEFINE_string("out", None, "Output directory (new).", required=True)
  flags.DEFINE_integer("num_shards", 0, f"0: one per {RECORDS_PER_SHARD} records.")


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  info = prepare(f.data, f.images, f.out, f.num_shards)
  print(f"wrote {info['num_records']} records ({info['image_bytes'] / 2**20:.1f} MiB of images) "
        f"in {len(info['shards'])} shard(s) to {f.out}")
  if info["unreadable_entries"] or info["unreadable_images"]:
    print(f"  stored but unusable: {info['unreadable_entries']} unreadable entries, "
          f"{info['unreadable_images']} unreadable image files (training skips them; run "
          "python -m llava_jax.data.validate for details)", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main)
