"""Our model directory: Orbax params + model config + tokenizer + image preprocessor.

```
DIR/params/                   Orbax checkpoint of {'params': tree} (canonical layout, see model/)
DIR/config.json               {"model": model_cfg.to_dict()}
DIR/tokenizer/                HF tokenizer files (AutoTokenizer.from_pretrained(DIR/tokenizer))
DIR/preprocessor_config.json  CLIP image-processor settings (size, crop, mean, std)
DIR/prompt.json               template, image placement, system prompt (prompting.PromptSettings)
DIR/checksums.json            size + SHA-256 of every other file, as in a training step
```
`seal` writes the checksums once the directory is complete; `verify` checks them before a load
(`llava_jax.load`, chat, serve, evaluate, `convert to-hf`), naming the first changed, truncated or
missing file. A directory without them (written by an older version) loads unverified, with a
warning; after editing a side file by hand, delete checksums.json (or convert again).
Outputs are built in a hidden sibling directory and renamed into place only once complete, so a
failed conversion leaves nothing at the destination.
"""

import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from llava_jax.config import check as config_check
from llava_jax.data import image as image_lib

PARAMS = "params"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
PREPROCESSOR = "preprocessor_config.json"
# Our extra preprocessor key: LLaVA's aspect handling, 'pad' (LLaVA-1.5 expand2square) or 'crop'
# (CLIP). HF's CLIPImageProcessor always crops, so it is absent from llava-hf files (= 'crop').
IMAGE_ASPECT = "image_aspect"

# Everything a tokenizer may consist of across HF tokenizer classes.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json")

# OpenAI CLIP normalization (LLaVA's image processor uses it too), from the one image path.
CLIP_MEAN = image_lib.CLIP_MEAN
CLIP_STD = image_lib.CLIP_STD


def is_model_dir(path: str | os.PathLike) -> bool:
  path = pathlib.Path(path)
  return (path / PARAMS).is_dir() and (path / CONFIG).is_file()


@contextlib.contextmanager
def staged_output(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields an empty temp dir next to `dest`; on success it becomes `dest`, on error it vanishes.

  Refuses an existing `dest` up front unless `overwrite`; the old `dest` is only removed after
  the new one is complete.
  """
  dest = pathlib.Path(dest).absolute()
  if dest.exists() and not overwrite:
    raise FileExistsError(f"{dest} already exists (pass --overwrite to replace it)")
  dest.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
  try:
    yield staging
    if dest.exists():
      trash = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
      dest.rename(trash / dest.name)
      staging.rename(dest)
      shutil.rmtree(trash)
    else:
      staging.rename(dest)
  finally:
    if staging.exists():
      shutil.rmtree(staging)


def save_params(path: str | os.PathLike, params: Any):
  """Writes {'params': params} (numpy or jax leaves) as an Orbax checkpoint at `path`."""
  # By default Orbax deep-copies every host array up front (a second copy of the model) and
  # writes them all at once; the conversion owns its arrays, so skip the copy and cap the bytes
  # in flight (weights hardly compress; zstd buffers cost a copy). StandardRestore reads it.
  # The jax.Array entry is never used (leaves are numpy), but without one Orbax logs "No jax.Array
  # in TypeHandlerRegistry" on every save.
  registry = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, ocp.type_handlers.ArrayHandler()),
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
  handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, type_handler_registry=registry,
                                        use_compression=False)
  params = jax.tree.map(np.asarray, params)
  with ocp.Checkpointer(handler) as checkpointer:
    checkpointer.save(pathlib.Path(path).absolute(), args=ocp.args.PyTreeSave({"params": params}))


def restore_params(path: str | os.PathLike, target: Any = None) -> Any:
  """Reads the {'params': ...} tree at `path`.

  `target`: optional matching tree of `jax.ShapeDtypeStruct` (with shardings) to restore into;
  dtypes are cast to the target's. Without it the saved dtypes come back.
  """
  path = pathlib.Path(path).absolute()
  # Orbax reads every array at once by default, each through a temporary buffer; capping the
  # bytes in flight keeps the peak near one copy of the model.
  with ocp.Checkpointer(ocp.StandardCheckpointHandler(restore_concurrent_gb=1)) as checkpointer:
    if target is None:
      return checkpointer.restore(path)
    return checkpointer.restore(path, args=ocp.args.StandardRestore(target))


def seal(path: str | os.PathLike, model_cfg: ml_collections.ConfigDict) -> None:
  """Writes `path/checksums.json` over every file of the finished directory."""
  from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top  # training-side deps
  workdirs.write_checksums(path, {"model": model_cfg.to_dict()})


def verify(path: str | os.PathLike) -> None:
  """CheckpointError naming the first file that differs from `seal`'s checksums."""
  from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top
  if not workdirs.verify_step(path):
    logging.warning("model directory %s has no %s (written by an older version, or its side "
                    "files edited): loading it unverified", path, workdirs.CHECKSUMS)


def write_config(model_dir: str | os.PathLike, model_cfg: ml_collections.ConfigDict):
  text = json.dumps({"model": model_cfg.to_dict()}, indent=2, sort_keys=True)
  (pathlib.Path(model_dir) / CONFIG).write_text(text + "\n")


def read_config(model_dir: str | os.PathLike) -> ml_collections.ConfigDict:
  path = pathlib.Path(model_dir) / CONFIG
  data = json.loads(path.read_text())
  if "model" not in data:
    raise ValueError(f"{path}: no 'model' entry")
  model_cfg = ml_collections.ConfigDict(data["model"])
  found = config_check.problems(ml_collections.ConfigDict({"model": model_cfg}))
  if found:   # named here, not as a crash deep in the model code
    raise config_check.ConfigError([f"{path}: {problem}" for problem in found])
  return model_cfg


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
  """Copies the tokenizer files found in `src` into `dst`; returns their names."""
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  names = [name for name in TOKENIZER_FILES if (src / name).is_file()]
  if names:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
      shutil.copy2(src / name, dst / name)
  return names


def default_preprocessor(model_cfg: ml_collections.ConfigDict) -> dict:
  """CLIPImageProcessor settings matching the vision tower (what LLaVA ships)."""
  size = model_cfg.vision.image_size
  return {
      "image_processor_type": "CLIPImageProcessor",
      "do_resize": True, "size": {"shortest_edge": size},
      "do_center_crop": True, "crop_size": {"height": size, "width": size},
      "do_rescale": True, "rescale_factor": 1 / 255,
      "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
      "do_convert_rgb": True, "resample": 3,
  }


def read_preprocessor(model_dir: str | os.PathLike) -> dict:
  return json.loads((pathlib.Path(model_dir) / PREPROCESSOR).read_text())


def write_preprocessor(model_dir: str | os.PathLike, settings: dict):
  text = json.dumps(settings, indent=2, sort_keys=True)
  (pathlib.Path(model_dir) / PREPROCESSOR).write_text(text + "\n")


def find_preprocessor(directory: str | os.PathLike, model_cfg: ml_collections.ConfigDict) -> dict:
  """The image-processor settings shipped in `directory`, else CLIP's defaults for the model."""
  directory = pathlib.Path(directory)
  for name in (PREPROCESSOR, "processor_config.json"):
    path = directory / name
    if path.is_file():
      settings = json.loads(path.read_text())
      settings = settings.get("image_processor", settings)  # processor_config nests it
      if "image_mean" in settings:
        return settings
  logging.warning("%s: no image-processor config; using CLIP defaults", directory)
  return default_preprocessor(model_cfg)
