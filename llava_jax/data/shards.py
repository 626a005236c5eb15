"""The prepared-dataset format: ArrayRecord shards with the image bytes inside each record.

A prepared directory (written by `python -m llava_jax.data.prepare`) holds
  llava-NNNNN-of-MMMMM.array_record   the records, in source order across shards
  dataset_info.json                   {"format", "num_records", "shards", "source", ...}
Each ArrayRecord record is one LLaVA record:
  b"LLJ1" | uint32 little-endian header length | header JSON (utf-8) | image bytes, concatenated
  header = {"id", "where", "data": the LLaVA record or null, "problem_kind", "problem",
            "images": [byte length, or null where the file could not be read]}
Unreadable entries (malformed JSONL lines, unreadable image files) are stored too, so the
pipeline skips them with the same record id and reason as it would reading the JSON + folder.
"""

import json
import os
import struct

import grain

from llava_jax.data import records as records_lib

INFO_FILE = "dataset_info.json"
FORMAT = "llava_jax.shards/1"
_MAGIC = b"LLJ1"


def encode(rec: records_lib.Record) -> bytes:
  """One stored record; `rec.images` None (nothing read yet) is stored as no images."""
  kind, problem = rec.problem or ("", "")
  images = rec.images or ()
  header = {"id": rec.id, "where": rec.where, "data": rec.data, "problem_kind": kind,
            "problem": problem, "images": [None if b is None else len(b) for b in images]}
  head = json.dumps(header, ensure_ascii=False).encode("utf-8")
  return b"".join([_MAGIC, struct.pack("<I", len(head)), head,
                   *(b for b in images if b is not None)])


def decode(raw: bytes) -> records_lib.Record:
  if raw[:4] != _MAGIC:
    raise ValueError(f"not a {FORMAT} record (starts with {raw[:4]!r})")
  (n,) = struct.unpack("<I", raw[4:8])
  header = json.loads(raw[8:8 + n].decode("utf-8"))
  offset, images = 8 + n, []
  for size in header["images"]:
    images.append(None if size is None else raw[offset:offset + size])
    offset += size or 0
  problem = (header["problem_kind"], header["problem"]) if header["data"] is None else None
  return records_lib.Record(header["id"], header["data"], header["where"], problem, tuple(images))


def shard_name(i: int, n: int) -> str:
  return f"llava-{i:05d}-of-{n:05d}.array_record"


def read_info(directory: str) -> dict:
  with open(os.path.join(directory, INFO_FILE)) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ValueError(f"{directory}: format {info.get('format')!r}, expected {FORMAT!r}")
  return info


class ShardSource(grain.sources.RandomAccessDataSource):
  """Random access to the records.Records of a prepared directory (Grain data source)."""

  def __init__(self, directory: str):
    self.directory = directory
    info = read_info(directory)
    self._paths = [os.path.join(directory, name) for name in info["shards"]]
    self._source = grain.sources.ArrayRecordDataSource(self._paths)
    if len(self._source) != info["num_records"]:
      raise ValueError(f"{directory}: {len(self._source)} records on disk, "
                       f"{INFO_FILE} says {info['num_records']}")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> records_lib.Record:
    return decode(self._source[index])

  def __repr__(self) -> str:
    return f"ShardSource({self.directory!r})"
