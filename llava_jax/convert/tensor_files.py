"""Reading and writing Hugging Face weight files one tensor at a time.

A 7B checkpoint is ~14 GB in half precision; conversion must never hold it twice, so the reader
opens files lazily (safetensors memory-maps them) and hands out one tensor per `read(key)`, and
the writer flushes a shard as soon as it reaches `max_shard_bytes`.
"""

import json
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top  # only for legacy .bin files
  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; reinterpret the bits.
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _load_torch_state_dict(path: pathlib.Path) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{path}: reading a PyTorch .bin state dict needs torch "
        "(pip install torch==2.13.0); safetensors files do not.") from e
  state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
  return dict(state)


def weight_files(path: str | os.PathLike) -> list[pathlib.Path]:
  """The weight files of a checkpoint: a file, or a directory as `save_pretrained` writes it."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
  for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
    index = path / index_name
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      return [path / name for name in sorted(set(weight_map.values()))]
  for single in (SAFETENSORS_SINGLE, TORCH_SINGLE):
    if (path / single).exists():
      return [path / single]
  found = sorted(path.glob("*.safetensors"))
  if found:
    return found
  raise FileNotFoundError(
      f"{path}: no {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, {TORCH_SINGLE} or *.safetensors")


class TensorReader:
  """Named tensors of one or more checkpoint files, read lazily one at a time.

  `read(key)` returns a fresh numpy array in the file's dtype (bfloat16 via ml_dtypes); shapes
  are known from the headers without reading data (safetensors) so mismatches fail early.
  """

  def __init__(self, files: Sequence[str | os.PathLike]):
    self._where = {}      # key -> open safetensors handle or loaded torch state dict
    self._handles = []
    for file in map(pathlib.Path, files):
      if file.suffix == ".safetensors":
        source = safetensors.safe_open(str(file), framework="numpy")
        self._handles.append(source)
        keys = list(source.keys())
      else:
        source = _load_torch_state_dict(file)
        keys = list(source)
      for key in keys:
        if key in self._where:
          raise ValueError(f"{file}: tensor {key!r} is also in another file of this checkpoint")
        self._where[key] = source

  @classmethod
  def from_path(cls, path: str | os.PathLike) -> "TensorReader":
    return cls(weight_files(path))

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def shape(self, key: str) -> tuple[int, ...]:
    source = self._where[key]
    if isinstance(source, dict):
      return tuple(source[key].shape)
    return tuple(source.get_slice(key).get_shape())

  def read(self, key: str) -> np.ndarray:
    source = self._where[key]
    if isinstance(source, dict):
      return _torch_to_numpy(source[key])
    return source.get_tensor(key)

  def __call__(self, key: str) -> np.ndarray:
    return self.read(key)


def parse_size(size: str | int) -> int:
  """'5GB' / '500MB' / 1234 -> bytes."""
  if isinstance(size, int):
    return size
  text = size.strip().upper()
  for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10),
                       ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
    if text.endswith(unit):
      return int(float(text[: -len(unit)]) * factor)
  return int(text)


class ShardedSafetensorsWriter:
  """Writes (key, array) pairs into safetensors shards plus an index, like `save_pretrained`.

  At most one shard (`max_shard_bytes`, or one tensor if larger) is buffered in memory.
  Writes `model.safetensors` when everything fits one shard, else
  `model-0000i-of-0000n.safetensors` and `model.safetensors.index.json`.
  """

  def __init__(self, directory: str | os.PathLike, max_shard_bytes: int = 5 * 10**9):
    self._dir = pathlib.Path(directory)
    self._max = max_shard_bytes
    self._pending: dict[str, np.ndarray] = {}
    self._pending_bytes = 0
    self._shards: list[list[str]] = []   # keys of each written shard
    self._seen: set[str] = set()
    self._total_bytes = 0

  def _tmp_name(self, i: int) -> pathlib.Path:
    return self._dir / f"shard-{i:05d}.safetensors.part"

  def _flush(self):
    if not self._pending:
      return
    safetensors.numpy.save_file(self._pending, self._tmp_name(len(self._shards)),
                                metadata={"format": "pt"})
    self._shards.append(list(self._pending))
    self._pending, self._pending_bytes = {}, 0

  def add(self, key: str, array: np.ndarray):
    if key in self._seen:
      raise ValueError(f"tensor {key!r} written twice")
    self._seen.add(key)
    array = np.ascontiguousarray(array)
    if self._pending and self._pending_bytes + array.nbytes > self._max:
      self._flush()
    self._pending[key] = array
    self._pending_bytes += array.nbytes
    self._total_bytes += array.nbytes

  def add_all(self, items: Iterable[tuple[str, np.ndarray]]):
    for key, array in items:
      self.add(key, array)

  def close(self) -> list[str]:
    """Flushes and names the shards; returns the file names written."""
    self._flush()
    n = len(self._shards)
    if n == 1:
      self._tmp_name(0).rename(self._dir / SAFETENSORS_SINGLE)
      return [SAFETENSORS_SINGLE]
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for i, (name, keys) in enumerate(zip(names, self._shards)):
      self._tmp_name(i).rename(self._dir / name)
      weight_map.update({key: name for key in keys})
    index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
    (self._dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names + [SAFETENSORS_INDEX]
