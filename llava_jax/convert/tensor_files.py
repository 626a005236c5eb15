"""Reading and writing Hugging Face weight files one tensor at a time.

A 7B checkpoint is ~14 GB in half precision; conversion must never hold it twice. The safetensors
format is a little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}}
and the raw bytes. We read each tensor with plain file reads into a fresh array (memory-mapping,
as `safetensors.safe_open` does, would leave every touched page counted in the process' memory)
and write each tensor straight to disk as it comes, so at most one tensor is in flight.
"""

import json
import os
import pathlib
import shutil
import struct
from typing import Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"

_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
           "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
           "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
           "BOOL": np.dtype("?"), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
           "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2)}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsFile:
  """The header of one .safetensors file; `read(key)` reads that tensor's bytes only."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    with open(path, "rb") as f:
      (length,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    self._data_start = 8 + length
    self.entries = {}
    for key, info in header.items():
      if info["dtype"] not in _DTYPES:
        raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
      self.entries[key] = (_DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"])

  def shape(self, key: str) -> tuple[int, ...]:
    return self.entries[key][1]

  def read(self, key: str) -> np.ndarray:
    dtype, shape, (begin, end) = self.entries[key]
    out = np.empty(shape, dtype)
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    if len(buffer) != end - begin:
      raise ValueError(f"{self.path}: tensor {key!r} {shape} {dtype} needs {len(buffer)} bytes, "
                       f"the header gives {end - begin}")
    with open(self.path, "rb", buffering=0) as f:
      f.seek(self._data_start + begin)
      done = 0
      while done < len(buffer):   # A single read returns at most ~2 GiB on Linux.
        n = f.readinto(buffer[done:])
        if not n:
          raise ValueError(f"{self.path}: file ends inside tensor {key!r}")
        done += n
    return out


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
    self._where = {}      # key -> SafetensorsFile or loaded torch state dict
    for file in map(pathlib.Path, files):
      if file.suffix == ".safetensors":
        source = SafetensorsFile(file)
        keys = list(source.entries)
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
    return source.shape(key)

  def read(self, key: str) -> np.ndarray:
    source = self._where[key]
    if isinstance(source, dict):
      return _torch_to_numpy(source[key])
    return source.read(key)

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


class _ShardFile:
  """One safetensors file being written: tensor bytes go to a side file as they come, and the
  header (which must come first) is prepended when the shard is closed."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._data_path = path.with_name(path.name + ".data")
    self._data = open(self._data_path, "wb")
    self.header = {}
    self.nbytes = 0

  def add(self, key: str, array: np.ndarray):
    if array.dtype not in _DTYPE_NAMES:
      raise ValueError(f"tensor {key!r}: dtype {array.dtype} has no safetensors name")
    array = np.asarray(array, order="C")   # (ascontiguousarray would make scalars 1-d)
    self._data.write(memoryview(array.reshape(-1).view(np.uint8)))
    self.header[key] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [self.nbytes, self.nbytes + array.nbytes]}
    self.nbytes += array.nbytes

  def close(self):
    self._data.close()
    header = json.dumps({"__metadata__": {"format": "pt"}, **self.header},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)   # safetensors aligns the data start to 8 bytes
    with open(self.path, "wb") as out, open(self._data_path, "rb") as data:
      out.write(struct.pack("<Q", len(header)))
      out.write(header)
      shutil.copyfileobj(data, out, 64 * 2**20)
    self._data_path.unlink()


class ShardedSafetensorsWriter:
  """Writes (key, array) pairs into safetensors shards plus an index, like `save_pretrained`.

  Tensors are written to disk as they arrive (memory: one tensor). A new shard starts when the
  next tensor would take the current one past `max_shard_bytes`. Writes `model.safetensors` when
  everything fits one shard, else `model-0000i-of-0000n.safetensors` and
  `model.safetensors.index.json`.
  """

  def __init__(self, directory: str | os.PathLike, max_shard_bytes: int = 5 * 10**9):
    self._dir = pathlib.Path(directory)
    self._max = max_shard_bytes
    self._shards: list[_ShardFile] = []
    self._seen: set[str] = set()

  def add(self, key: str, array: np.ndarray):
    if key in self._seen:
      raise ValueError(f"tensor {key!r} written twice")
    self._seen.add(key)
    current = self._shards[-1] if self._shards else None
    if current is None or (current.header and current.nbytes + array.nbytes > self._max):
      if current is not None:
        current.close()
      current = _ShardFile(self._dir / f"shard-{len(self._shards):05d}.safetensors.part")
      self._shards.append(current)
    current.add(key, array)

  def add_all(self, items: Iterable[tuple[str, np.ndarray]]):
    for key, array in items:
      self.add(key, array)

  def close(self) -> list[str]:
    """Finishes the last shard and names the shards; returns the file names written."""
    if not self._shards:
      raise ValueError("no tensors were written")
    self._shards[-1].close()
    n = len(self._shards)
    if n == 1:
      self._shards[0].path.rename(self._dir / SAFETENSORS_SINGLE)
      return [SAFETENSORS_SINGLE]
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for name, shard in zip(names, self._shards):
      shard.path.rename(self._dir / name)
      weight_map.update({key: name for key in shard.header})
    total = sum(shard.nbytes for shard in self._shards)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (self._dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names + [SAFETENSORS_INDEX]
