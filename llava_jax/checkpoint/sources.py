"""One entry for every place a trained LLaVA can live: our model directory, a training workdir
(latest committed step) or a llava-hf directory. Used by `llava_jax.load` and by `to-hf`.
"""

import dataclasses
import json
import pathlib
from typing import Any

import ml_collections
import transformers

from llava_jax.checkpoint import model_dir
from llava_jax.convert import hf
from llava_jax.convert import hf_config
from llava_jax.convert import tensor_files
from llava_jax.infer import prompting


@dataclasses.dataclass
class Checkpoint:
  """What a checkpoint provides besides the model code."""
  model_cfg: ml_collections.ConfigDict
  params: Any                          # the canonical tree (without the 'params' wrapper)
  tokenizer_dir: pathlib.Path | None   # HF tokenizer files, when the checkpoint has them
  preprocessor: dict                   # CLIP image-processor settings
  prompt: prompting.PromptSettings | None = None   # template etc. trained with, when stored


def _is_training_workdir(path: pathlib.Path) -> bool:
  return (path / "checkpoints").is_dir() and (path / "config.json").is_file()


def _is_llava_hf(path: pathlib.Path) -> bool:
  config = path / "config.json"
  return config.is_file() and json.loads(config.read_text()).get("model_type") == "llava"


def _from_model_dir(path: pathlib.Path, target) -> Checkpoint:
  model_dir.verify(path)   # before any array is read: a flipped bit must not load as weights
  model_cfg = model_dir.read_config(path)
  restored = model_dir.restore_params(path / model_dir.PARAMS,
                                      None if target is None else {"params": target})
  tokenizer = path / model_dir.TOKENIZER
  return Checkpoint(model_cfg, restored["params"], tokenizer if tokenizer.is_dir() else None,
                    model_dir.find_preprocessor(path, model_cfg), prompting.read_settings(path))


def _from_llava_hf(path: pathlib.Path, dtype) -> Checkpoint:
  model_cfg = hf_config.from_hf(transformers.AutoConfig.from_pretrained(path))
  reader = tensor_files.TensorReader.from_path(path)
  read = reader.read if dtype is None else (lambda k: reader.read(k).astype(dtype, copy=False))
  params = hf.hf_to_params(read, reader.keys(), model_cfg)
  has_tokenizer = any((path / name).is_file() for name in model_dir.TOKENIZER_FILES)
  return Checkpoint(model_cfg, params, path if has_tokenizer else None,
                    model_dir.find_preprocessor(path, model_cfg), prompting.read_settings(path))


def _from_training_workdir(path: pathlib.Path, target) -> Checkpoint:
  from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top  # training-side deps
  config = workdirs.read_config(path)   # the config saved with the latest committed step
  if "lora" in config and config.lora.rank > 0:
    # Adapters + projector only: merged into the base the run names (convert/adapters.py).
    from llava_jax.convert import adapters  # pylint: disable=g-import-not-at-top
    return adapters.merged_checkpoint(path, target=target)
  # Config and params of the same newest intact (checksum-verified) step.
  return workdir_checkpoint(*workdirs.read_config_and_params(path, lambda _: target))


def workdir_checkpoint(config: ml_collections.ConfigDict, params) -> Checkpoint:
  """A training run's checkpoint: its params with the tokenizer and image settings of its data."""
  tokenizer = pathlib.Path(config.data.tokenizer)
  preprocessor = model_dir.default_preprocessor(config.model)
  preprocessor[model_dir.IMAGE_ASPECT] = config.data.image_aspect
  return Checkpoint(config.model, params, tokenizer if tokenizer.is_dir() else None, preprocessor,
                    prompting.settings_from_data_config(config.data))


def kind(path: str | pathlib.Path) -> str:
  """'model_dir' | 'workdir' | 'llava_hf'; raises naming the path otherwise."""
  path = pathlib.Path(path)
  if model_dir.is_model_dir(path):
    return "model_dir"
  if _is_training_workdir(path):
    return "workdir"
  if _is_llava_hf(path):
    return "llava_hf"
  raise FileNotFoundError(
      f"{path}: not a model directory (params/ + config.json), a training workdir "
      "(checkpoints/ + config.json) or a llava-hf directory (config.json with model_type llava)")


def read_model_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Only the model config of a checkpoint (cheap: no tensors are read)."""
  path = pathlib.Path(path)
  found = kind(path)
  if found == "model_dir":
    return model_dir.read_config(path)
  if found == "workdir":
    from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top
    return workdirs.read_config(path).model
  return hf_config.from_hf(transformers.AutoConfig.from_pretrained(path))


def read_checkpoint(path: str | pathlib.Path, target: Any = None,
                    dtype: str | None = None) -> Checkpoint:
  """Loads params and side files from any supported checkpoint location.

  `target`: optional tree of `jax.ShapeDtypeStruct` (our checkpoints restore straight into its
  dtypes and shardings). `dtype`: cast applied per tensor when reading a llava-hf directory.
  """
  path = pathlib.Path(path)
  found = kind(path)
  if found == "model_dir":
    return _from_model_dir(path, target)
  if found == "workdir":
    return _from_training_workdir(path, target)
  return _from_llava_hf(path, dtype)
