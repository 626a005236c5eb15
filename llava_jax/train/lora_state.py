"""The train state of LoRA fine-tuning (`config.lora.rank > 0`).

state.params is the base tree plus `params['lora']`, the adapters (llava_jax/model/lora.py), so
the step, the optimizer split and the shardings work as for full training: `optim.trainable`
selects the adapters (and the projector), the rest is frozen, gets no gradient and no optimizer
state, and is stored in `lora.base_dtype`. A checkpoint holds only what trains (adapters,
projector, optimizer state, step); the base is referenced by the saved config
(`init.params_from`, or random init from `seed`) and read again on resume.
"""

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.model import lora as lora_lib
from llava_jax.model import quant
from llava_jax.train import optimizer
from llava_jax.train.state import StateFactory
from llava_jax.train.state import TrainState

LORA = lora_lib.LORA
LoraModel = lora_lib.LoraModel


def split_adapters(params: dict) -> tuple[dict, dict]:
  """(base parameters, adapters) of a LoRA parameter tree."""
  base = {k: v for k, v in params.items() if k != LORA}
  return base, params[LORA]


def _cast_frozen(base, trainable_patterns, dtype):
  """Frozen leaves (boxed or not) in `dtype`; trainable ones keep theirs."""
  trainable, frozen = optimizer.split_trainable(base, trainable_patterns)
  cast = lambda x: x.astype(dtype)
  frozen = jax.tree.map(cast, frozen)
  return optimizer.merge(trainable, frozen)


class LoraStateFactory(StateFactory):
  """A StateFactory whose parameters carry adapters and whose checkpoints leave the base out."""

  def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, tx, mesh):
    self.lora_cfg = config.lora
    all_layers = lora_lib.dense_layers(model, *model_lib.init_inputs(model.cfg))
    self.targets = lora_lib.select(all_layers, config.lora.targets, config.lora.rank)
    if config.train.loss_chunk_len > 0 and any(l.name == "llm/lm_head" for l in self.targets):
      raise ValueError("config.lora.targets adapts llm/lm_head, but config.train.loss_chunk_len "
                       f"= {config.train.loss_chunk_len} computes the loss from the head's kernel "
                       "alone; set loss_chunk_len=0 or leave the head out of the targets")
    if not any(p.startswith(LORA) for p in config.optim.trainable):
      raise ValueError(f"config.optim.trainable={tuple(config.optim.trainable)} selects no "
                       "adapter (lora/...): with config.lora.rank > 0 the adapters must train")
    super().__init__(LoraModel(model, config.lora.dropout), config.model, tx, config.optim.trainable, mesh)
    # What init.params_from / random init provide: the float base (quantized after loading).
    boxed = jax.eval_shape(lambda r: self._boxed_base(r, quantized=False), jax.random.key(0))
    self.float_base = sharding.abstract(boxed, mesh)
    self.float_base_shardings = jax.tree.map(lambda x: x.sharding, self.float_base)

  def _boxed_base(self, rng, quantized: bool = True):
    base = model_lib.init_params(self.model.base, rng)
    base = _cast_frozen(base, self.trainable, jnp.dtype(self.lora_cfg.base_dtype))
    return self._quantize(base) if quantized else base

  def _quantize(self, base):
    """The adapted layers' kernels as codes + scales (QLoRA); boxed or plain leaves."""
    if self.lora_cfg.quant == "none":
      return base
    flat = traverse_util.flatten_dict(base)
    for l in self.targets:
      kernel = flat.pop(l.path + ("kernel",))
      boxed = isinstance(kernel, nn.LogicallyPartitioned)
      value = kernel.value if boxed else kernel
      codes, scales = quant.quantize(value, self.lora_cfg.quant, l.last_in_axis,
                                     self.lora_cfg.quant_block)
      rebox = (lambda v, kernel=kernel: kernel.replace_boxed(v)) if boxed else (lambda v: v)
      flat[l.path + ("kernel_qvalue",)] = rebox(codes)
      flat[l.path + ("kernel_scale",)] = rebox(scales)
    return traverse_util.unflatten_dict(flat)

  def quantized(self, base):
    """The float base (in `float_base` shardings) as the state holds it: QLoRA-quantized."""
    if self.lora_cfg.quant == "none":
      return base
    return jax.jit(self._quantize, in_shardings=(self.float_base_shardings,),
                   out_shardings=split_adapters(self.shardings.params)[0])(base)

  def _boxed_adapters(self, rng):
    return lora_lib.init_adapters(jax.random.fold_in(rng, 1), self.targets, self.lora_cfg.rank,
                                  self.lora_cfg.alpha)

  def _boxed_params(self, rng):
    return {**self._boxed_base(rng), LORA: self._boxed_adapters(rng)}

  def base_target(self):
    return self.float_base

  def random_params(self, rng):
    """A random float base (what `init.params_from=''` starts from); adapters come separately."""
    init = jax.jit(lambda r: nn.unbox(self._boxed_base(r, quantized=False)),
                   out_shardings=self.float_base_shardings)
    return init(rng)

  def fresh_adapters(self, rng):
    init = jax.jit(lambda r: nn.unbox(self._boxed_adapters(r)),
                   out_shardings=self.shardings.params[LORA])
    return init(rng)

  def initial_state(self, init_cfg, rng) -> TrainState:
    from llava_jax.train import init as init_lib
    base = self.quantized(init_lib.initial_params(init_cfg, self, rng))
    return self.state_from_params({**base, LORA: self.fresh_adapters(rng)})

  def _saved_keys(self, params) -> set:
    """Flat keys a checkpoint holds: the adapters and every trainable parameter."""
    trainable, _ = optimizer.split_trainable(params, self.trainable)
    keys = set(traverse_util.flatten_dict(trainable))
    return keys | {k for k in traverse_util.flatten_dict(params) if k[0] == LORA}

  def _saved_params(self, params) -> dict:
    flat = traverse_util.flatten_dict(params)
    keys = self._saved_keys(params)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k in keys})

  def saved(self, state: TrainState) -> dict:
    return dict(state.to_dict(), params=self._saved_params(state.params))

  def from_saved(self, saved, init_cfg, rng) -> TrainState:
    """The saved adapters, projector and optimizer state around the base `config.init` names."""
    from llava_jax.train import init as init_lib
    base = self.quantized(init_lib.initial_params(init_cfg, self, rng))
    return TrainState(step=saved["step"], params=optimizer.merge(saved["params"], base),
                      opt_state=saved["opt_state"])
