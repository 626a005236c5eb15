"""Where adapters come from, and a base model with them merged in (W + scale * a . b).

An adapter source is one of: our LoRA training workdir (`configs/finetune_lora.py`; its
checkpoint holds adapters + projector and its config names the base), a PEFT adapter directory,
or LLaVA's LoRA checkpoint (PEFT files + non_lora_trainables.bin). `llava_jax.load(base,
adapter=DIR)`, chat/serve/evaluate `--adapter` and `convert to-hf --merge_lora` all go through
`merged_checkpoint`.
"""

import dataclasses
import pathlib

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llava_jax.checkpoint import sources
from llava_jax.convert import peft
from llava_jax.model import lora as lora_lib


@dataclasses.dataclass
class Adapter:
  adapters: dict               # numpy tree, module paths as in llava_jax/model/lora.py
  projector: dict | None       # a trained projector that replaces the base's, if any
  base: str | None             # the base this adapter was trained on ('' = random init), if known
  train_config: ml_collections.ConfigDict | None = None
  dropout: float = 0.0         # the adapter input's dropout in training (PEFT's lora_dropout)


def is_lora_config(config: ml_collections.ConfigDict) -> bool:
  return "lora" in config and config.lora.rank > 0


def is_lora_workdir(path) -> bool:
  path = pathlib.Path(path)
  if not (path / "checkpoints").is_dir():
    return False
  from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top
  try:
    return is_lora_config(workdirs.read_config(path))
  except FileNotFoundError:
    return False


def has_adapters(path) -> bool:
  return peft.is_adapter_dir(path) or is_lora_workdir(path)


def read_adapter(path, model_cfg: ml_collections.ConfigDict) -> Adapter:
  """The adapter at `path` (any source above) for a base with `model_cfg`."""
  path = pathlib.Path(path)
  if peft.is_adapter_dir(path):
    adapters, projector = peft.read_adapter_dir(path, model_cfg)
    return Adapter(adapters, projector, base=None, dropout=peft.read_dropout(path))
  if not is_lora_workdir(path):
    raise FileNotFoundError(f"{path}: not an adapter (a PEFT/LLaVA LoRA directory with "
                            f"{peft.CONFIG}, or a LoRA training workdir)")
  from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top
  config = workdirs.read_config(path)
  saved = workdirs.restore_params(path)
  return Adapter(saved[lora_lib.LORA], saved.get("projector"), base=config.init.params_from,
                 train_config=config, dropout=config.lora.dropout)


def random_base(config: ml_collections.ConfigDict) -> dict:
  """The random base a LoRA run with `init.params_from=''` trained on (from its seed)."""
  from llava_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  module = model_lib.build(config.model)
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  init = jax.jit(lambda r: model_lib.unbox(model_lib.init_params(module, r)))
  dtype = jnp.dtype(config.lora.base_dtype)
  return jax.tree.map(lambda x: np.asarray(x.astype(dtype)), init(init_rng))


def _quantized_kernels(params: dict, config: ml_collections.ConfigDict, adapters: dict):
  """{layer path: (codes, scales)} of the adapted kernels, as a QLoRA run stored them."""
  if config.lora.quant == "none":
    return {}
  from llava_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from llava_jax.model import quant  # pylint: disable=g-import-not-at-top
  module = model_lib.build(config.model)
  layers = lora_lib.dense_layers(module, *model_lib.init_inputs(module.cfg))
  flat = traverse_util.flatten_dict(params)
  return {path: quant.quantize(jnp.asarray(flat[path + ("kernel",)]), config.lora.quant,
                               layers["/".join(path)].last_in_axis, config.lora.quant_block)
          for path in lora_lib.adapted_layers(adapters)}


def _as_trained(params: dict, config: ml_collections.ConfigDict, adapters: dict) -> dict:
  """The base as a QLoRA run saw it: adapted kernels quantized and dequantized again."""
  from llava_jax.model import quant  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(params)
  for path, (codes, scales) in _quantized_kernels(params, config, adapters).items():
    dtype = flat[path + ("kernel",)].dtype
    flat[path + ("kernel",)] = np.asarray(quant.dequantize(codes, scales, dtype))
  return traverse_util.unflatten_dict(flat)


def _stored_as_trained(params: dict, config: ml_collections.ConfigDict, adapters: dict) -> dict:
  """The base as a QLoRA run stored it: adapted kernels as `kernel_qvalue` + `kernel_scale`."""
  flat = traverse_util.flatten_dict(params)
  for path, (codes, scales) in _quantized_kernels(params, config, adapters).items():
    del flat[path + ("kernel",)]
    flat[path + ("kernel_qvalue",)], flat[path + ("kernel_scale",)] = codes, scales
  return traverse_util.unflatten_dict(flat)


def apply(params: dict, adapter: Adapter) -> dict:
  """The base `params` with `adapter` merged in and its projector, if any, swapped in."""
  merged = jax.device_get(lora_lib.merge(params, adapter.adapters))
  if adapter.projector is not None:
    merged = dict(merged, projector=adapter.projector)
  return merged


def _base_and_adapter(base, adapter):
  """(checkpoint of the base, its float parameters, the Adapter); see `merged_checkpoint`."""
  if adapter is None:
    found = read_adapter(base, sources.read_model_config(base))
    if found.base:
      params = sources.read_checkpoint(found.base).params
    else:
      params = random_base(found.train_config)
    return sources.workdir_checkpoint(found.train_config, None), params, found
  ckpt = sources.read_checkpoint(base)
  return ckpt, ckpt.params, read_adapter(adapter, ckpt.model_cfg)


def merged_checkpoint(base, adapter=None, target=None) -> sources.Checkpoint:
  """`base` with `adapter` merged in; with no `adapter`, `base` is a LoRA training workdir whose
  own base (named by its saved config) it is merged into. `target`: as in
  `sources.read_checkpoint`, its dtypes are applied to the merged tree."""
  ckpt, params, found = _base_and_adapter(base, adapter)
  if found.train_config is not None:
    params = _as_trained(params, found.train_config, found.adapters)
  ckpt.params = apply(params, found)
  if target is not None:
    ckpt.params = jax.tree.map(lambda x, t: np.asarray(x, t.dtype), ckpt.params, target)
  return ckpt


def unmerged_checkpoint(base, adapter=None, target=None) -> tuple[sources.Checkpoint, dict]:
  """(`base` with the adapter's projector, the adapters apart) for applying them on the fly.

  The base stays as its run trained on it: a QLoRA run's adapted kernels as int8/int4/NF4
  codes + scales. `target`'s dtypes apply to the base leaves it names; adapters stay float32.
  """
  ckpt, params, found = _base_and_adapter(base, adapter)
  if target is not None:
    flat_target = traverse_util.flatten_dict(target)
    flat = {k: np.asarray(v, flat_target[k].dtype) if k in flat_target else v
            for k, v in traverse_util.flatten_dict(params).items()}
    params = traverse_util.unflatten_dict(flat)
  if found.train_config is not None:
    params = jax.device_get(_stored_as_trained(params, found.train_config, found.adapters))
  if found.projector is not None:
    params = dict(params, projector=found.projector)
  ckpt.params = params
  return ckpt, jax.tree.map(lambda x: np.asarray(x, np.float32), found.adapters)
