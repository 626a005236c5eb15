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
    return Adapter(adapters, projector, base=None)
  if not is_lora_workdir(path):
    raise FileNotFoundError(f"{path}: not an adapter (a PEFT/LLaVA LoRA directory with "
                            f"{peft.CONFIG}, or a LoRA training workdir)")
  from llava_jax.checkpoint import workdirs  # pylint: disable=g-import-not-at-top
  config = workdirs.read_config(path)
  saved = workdirs.restore_params(path)
  return Adapter(saved[lora_lib.LORA], saved.get("projector"), base=config.init.params_from,
                 train_config=config)


def random_base(config: ml_collections.ConfigDict) -> dict:
  """The random base a LoRA run with `init.params_from=''` trained on (from its seed)."""
  from llava_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from llava_jax.train.state import init_inputs  # pylint: disable=g-import-not-at-top
  module = model_lib.build(config.model)
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  init = jax.jit(lambda r: model_lib.unbox(module.init(r, *init_inputs(config.model))["params"]))
  dtype = jnp.dtype(config.lora.base_dtype)
  return jax.tree.map(lambda x: np.asarray(x.astype(dtype)), init(init_rng))


def _as_trained(params: dict, config: ml_collections.ConfigDict, adapters: dict) -> dict:
  """The base as a QLoRA run saw it: adapted kernels quantized and dequantized again."""
  if config.lora.quant == "none":
    return params
  from llava_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from llava_jax.model import quant  # pylint: disable=g-import-not-at-top
  from llava_jax.train.state import init_inputs  # pylint: disable=g-import-not-at-top
  layers = lora_lib.dense_layers(model_lib.build(config.model), *init_inputs(config.model))
  flat = traverse_util.flatten_dict(params)
  for path in lora_lib.adapted_layers(adapters):
    kernel = flat[path + ("kernel",)]
    codes, scales = quant.quantize(jnp.asarray(kernel), config.lora.quant,
                                   layers["/".join(path)].last_in_axis, config.lora.quant_block)
    flat[path + ("kernel",)] = np.asarray(quant.dequantize(codes, scales, kernel.dtype))
  return traverse_util.unflatten_dict(flat)


def apply(params: dict, adapter: Adapter) -> dict:
  """The base `params` with `adapter` merged in and its projector, if any, swapped in."""
  merged = jax.device_get(lora_lib.merge(params, adapter.adapters))
  if adapter.projector is not None:
    merged = dict(merged, projector=adapter.projector)
  return merged


def merged_checkpoint(base, adapter=None, target=None) -> sources.Checkpoint:
  """`base` with `adapter` merged in; with no `adapter`, `base` is a LoRA training workdir whose
  own base (named by its saved config) it is merged into. `target`: as in
  `sources.read_checkpoint`, its dtypes are applied to the merged tree."""
  if adapter is None:
    found = read_adapter(base, sources.read_model_config(base))
    config = found.train_config
    if found.base:
      params = sources.read_checkpoint(found.base).params
    else:
      params = random_base(config)
    params = _as_trained(params, config, found.adapters)
    ckpt = sources.workdir_checkpoint(config, None)
  else:
    ckpt = sources.read_checkpoint(base)
    found = read_adapter(adapter, ckpt.model_cfg)
    params = ckpt.params
    if found.train_config is not None:
      params = _as_trained(params, found.train_config, found.adapters)
  ckpt.params = apply(params, found)
  if target is not None:
    ckpt.params = jax.tree.map(lambda x, t: np.asarray(x, t.dtype), ckpt.params, target)
  return ckpt
