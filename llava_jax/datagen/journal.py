"""Append-only JSONL journals that make a generation run resumable.

Every line is flushed and fsync'ed as soon as it is written, so a crash loses at most the
request in flight; a line cut short by a crash is dropped (and truncated away) on reopening.
"""

import json
import os
from typing import Iterator


class Journal:
  """One JSONL file of finished items, keyed by their 'id' field."""

  def __init__(self, path: str):
    self.path = path
    self.records = list(_read_repairing(path))
    self.ids = {r["id"] for r in self.records}
    self._file = None

  def append(self, record: dict) -> None:
    if self._file is None:
      os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
      self._file = open(self.path, "a", encoding="utf-8")
    self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self._file.flush()
    os.fsync(self._file.fileno())
    self.records.append(record)
    self.ids.add(record["id"])

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def _read_repairing(path: str) -> Iterator[dict]:
  if not os.path.exists(path):
    return
  with open(path, "rb") as f:
    data = f.read()
  lines = data.splitlines(keepends=True)
  good_end = 0
  for line_no, line in enumerate(lines, 1):
    try:
      if not line.endswith(b"\n"):
        raise ValueError("line cut short")
      record = json.loads(line)
    except ValueError as e:
      if line_no < len(lines):
        raise ValueError(f"{path}:{line_no}: corrupt journal line ({e}); only the last line "
                         "may be partial") from e
      with open(path, "r+b") as f:  # A crash cut the last line short: drop it.
        f.truncate(good_end)
      return
    good_end += len(line)
    yield record


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON via a temporary file and rename, so readers never see half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1)
  os.replace(tmp, path)
