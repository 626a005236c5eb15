"""LoRA adapters in PEFT's layout, both ways, and LLaVA's own LoRA checkpoints.

PEFT directory (`peft.PeftModel.from_pretrained(LlavaForConditionalGeneration..., DIR)` loads it):
  adapter_config.json         r, lora_alpha, target_modules (a regex over module names),
                              modules_to_save ['multi_modal_projector']
  adapter_model.safetensors   base_model.model.<module>.lora_A.weight  (R, in)
                              base_model.model.<module>.lora_B.weight  (out, R)
                              base_model.model.model.multi_modal_projector.linear_K.{weight,bias}
<module> is the llava-hf in-memory module name (`model.language_model.layers.3.self_attn.q_proj`).
LLaVA's LoRA checkpoints (`finetune_lora.sh`) are the same plus `non_lora_trainables.bin`
holding the projector (`base_model.model.model.mm_projector.{0,2}.*`), with LLaVA's module names
(`model.layers.3.self_attn.q_proj`), which `hf.canonical_key` maps.

Ours: adapters {'a': [L?, in..., R], 'b': [L?, R, out...], 'scale': [L?]} at the module paths
of llava_jax/model/lora.py; `hf.py` stays the one name map for the base tensors.
"""

import json
import math
import pathlib
import re

import numpy as np
import safetensors.numpy

from llava_jax.convert import hf
from llava_jax.convert import tensor_files

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA = "non_lora_trainables.bin"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")
_PROJECTOR_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?:mm_projector\.(\d+)|multi_modal_projector\."
    r"linear_(\d+))(?:\.modules_to_save\.default)?\.(weight|bias)$")


def is_adapter_dir(path) -> bool:
  return (pathlib.Path(path) / CONFIG).is_file()


def _kernel_entries(model_cfg) -> dict[str, hf.Entry]:
  """HF module name -> entry of its kernel (Linear layers only)."""
  return {name[:-len(".weight")]: e for name, e in hf.hf_names(model_cfg).items()
          if e.path.endswith("/kernel") and e.transform.kind == "linear"}


def _module_pattern(names) -> str:
  """A regex fully matching these module names, with layer indices folded into \\d+."""
  templates = sorted({re.escape(re.sub(r"\.\d+\.", ".{i}.", n)).replace(re.escape("{i}"), r"\d+")
                      for n in names})
  return "^(?:" + "|".join(templates) + ")$"


def to_peft(adapters: dict, projector: dict | None, model_cfg, dropout: float = 0.0
            ) -> tuple[dict, dict]:
  """(adapter_config dict, {key: tensor}) for our adapters (numpy trees) and projector;
  `dropout` is the training run's lora.dropout (PEFT's lora_dropout)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(adapters)
  tensors, modules, ranks, scales = {}, [], set(), set()
  for module, e in _kernel_entries(model_cfg).items():
    path = tuple(e.path.split("/")[:-1])
    if path + ("a",) not in flat:
      continue
    a, b, scale = (np.asarray(flat[path + (k,)], np.float32) for k in ("a", "b", "scale"))
    if e.layer is not None:
      a, b, scale = a[e.layer], b[e.layer], scale[e.layer]
    rank = a.shape[-1]
    tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
    tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    modules.append(module)
    ranks.add(rank)
    scales.add(float(scale))
  if not modules:
    raise ValueError("the checkpoint holds no adapters that map to llava-hf Linear layers")
  if len(ranks) != 1 or len(scales) != 1:
    raise ValueError(f"adapters with several ranks {sorted(ranks)} or scales {sorted(scales)} "
                     "have no single PEFT config")
  rank, scale = ranks.pop(), scales.pop()
  modules_to_save = None
  if projector is not None:
    for key, tensor in hf.params_to_hf({"projector": projector}, model_cfg, only="projector"):
      tensors[PREFIX + key] = np.ascontiguousarray(tensor)
    modules_to_save = ["multi_modal_projector"]
  config = dict(peft_type="LORA", r=rank, lora_alpha=scale * rank, lora_dropout=dropout,
                target_modules=_module_pattern(modules), modules_to_save=modules_to_save,
                bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
                init_lora_weights=True, inference_mode=True, task_type=None,
                base_model_name_or_path=None)
  return config, tensors


def write_peft(out: pathlib.Path, config: dict, tensors: dict) -> list[str]:
  (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
  safetensors.numpy.save_file(tensors, str(out / WEIGHTS[0]), metadata={"format": "pt"})
  return [CONFIG, WEIGHTS[0]]


def read_dropout(path) -> float:
  """PEFT's lora_dropout of the adapter directory `path` (0 when absent)."""
  config_file = pathlib.Path(path) / CONFIG
  rate = json.loads(config_file.read_text()).get("lora_dropout", 0.0)
  if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
    raise ValueError(f"{config_file}: lora_dropout={rate!r} must be a number in [0, 1)")
  return float(rate)


def read_adapter_dir(path, model_cfg) -> tuple[dict, dict | None]:
  """(adapters, projector or None) as numpy trees from a PEFT or LLaVA LoRA directory."""
  path = pathlib.Path(path)
  config = json.loads((path / CONFIG).read_text())
  if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or \
      config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
    raise ValueError(f"{path / CONFIG}: only plain LoRA adapters (one r and lora_alpha, no "
                     "DoRA/rsLoRA/per-layer patterns) are supported")
  weights = [path / f for f in WEIGHTS if (path / f).is_file()]
  if not weights:
    raise FileNotFoundError(f"{path}: no {' or '.join(WEIGHTS)}")
  files = weights[:1] + ([path / NON_LORA] if (path / NON_LORA).is_file() else [])
  reader = tensor_files.TensorReader(files)
  scale = float(config["lora_alpha"]) / int(config["r"])
  entries = _kernel_entries(model_cfg)
  shapes = hf.param_shapes(model_cfg)
  leaves: dict[tuple, np.ndarray] = {}
  projector_tensors = {}
  for key in reader.keys():
    match = _LORA_KEY.match(key)
    if match:
      module, which = match.groups()
      name = hf.canonical_key(module + ".weight")
      e = entries.get(name[:-len(".weight")] if name else "")
      if e is None:
        raise ValueError(f"{path}: adapter tensor {key!r} is for no Linear layer of this base "
                         "model")
      full = shapes[e.path]
      kernel = full if e.layer is None else full[1:]
      in_shape, out_shape = kernel[:e.transform.n_in], kernel[e.transform.n_in:]
      x = reader.read(key).astype(np.float32)
      rank = int(config["r"])
      want = (rank, math.prod(in_shape)) if which == "A" else (math.prod(out_shape), rank)
      if tuple(x.shape) != want:
        raise ValueError(f"{path}: adapter tensor {key!r} has shape {tuple(x.shape)}, this base "
                         f"model needs {want} (an adapter for a base of other shapes?)")
      y = x.T.reshape(in_shape + (rank,)) if which == "A" else x.T.reshape((rank,) + out_shape)
      layer_path = tuple(e.path.split("/")[:-1])
      leaf = layer_path + ("a" if which == "A" else "b",)
      if e.layer is None:
        leaves[leaf] = y
      else:
        stacked = leaves.setdefault(leaf, np.zeros((full[0],) + y.shape, np.float32))
        stacked[e.layer] = y
        leaves.setdefault(layer_path + ("scale",), np.full((full[0],), scale, np.float32))
      if e.layer is None:
        leaves[layer_path + ("scale",)] = np.float32(scale)
      continue
    match = _PROJECTOR_KEY.match(key)
    if match:
      index = int(match.group(1)) // 2 + 1 if match.group(1) is not None else int(match.group(2))
      projector_tensors[f"{hf.PROJECTOR}linear_{index}.{match.group(3)}"] = key
      continue
    raise ValueError(f"{path}: unexpected tensor {key!r} (neither a LoRA A/B weight nor the "
                     "projector)")
  if not leaves:
    raise ValueError(f"{path}: no LoRA tensors")
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  adapters = traverse_util.unflatten_dict(leaves)
  projector = None
  if projector_tensors:
    params = hf.hf_to_params(lambda k: reader.read(projector_tensors[k]), projector_tensors,
                             model_cfg, allow_missing=("vision/.*", "llm/.*"))
    projector = params["projector"]
  return adapters, projector
