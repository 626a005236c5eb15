"""The train state: its abstract shape, its shardings, and how it is created.

Shapes come from `jax.eval_shape(model.init)` (nothing is allocated), shardings from the
parameters' logical axes through the one rules table in `llava_jax/sharding.py`, and the state is
then created directly in its sharded layout by a jitted function with `out_shardings`.
"""

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.config import schema
from llava_jax.train import optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array   # int32[]: number of updates applied (= batches consumed)
  params: Any       # the full parameter tree, float32 master weights
  opt_state: Any    # optimizer state of the trainable subtree only

  def to_dict(self) -> dict:
    """A plain dict for Orbax (which stores dicts, lists and arrays)."""
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"])


def init_inputs(model_cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Smallest inputs that touch every parameter: one image's worth of image tokens."""
  num_tokens = schema.num_image_tokens(model_cfg)
  size = model_cfg.vision.image_size
  input_ids = jnp.full((1, num_tokens), model_cfg.image_token_id, jnp.int32)
  pixels = jnp.zeros((1, 1, size, size, 3), jnp.float32)
  return input_ids, pixels


class StateFactory:
  """Knows the model and optimizer; makes abstract, random, loaded and fresh train states."""

  def __init__(self, model: nn.Module, model_cfg: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, trainable: Sequence[str], mesh: Mesh):
    self.model, self.model_cfg, self.tx, self.mesh = model, model_cfg, tx, mesh
    self.trainable = tuple(trainable)
    boxed = jax.eval_shape(self._boxed_state, jax.random.key(0))
    optimizer.check_trainable(nn.unbox(boxed.params), self.trainable)
    self.shardings: TrainState = sharding.logical_shardings(boxed, mesh)
    self.abstract: TrainState = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), self.shardings)

  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract.params))

  def num_trainable(self) -> int:
    trainable, _ = optimizer.split_trainable(self.abstract.params, self.trainable)
    return sum(x.size for x in jax.tree.leaves(trainable))

  def _boxed_params(self, rng):
    return self.model.init(rng, *init_inputs(self.model_cfg))["params"]

  def _state_from_params(self, params) -> TrainState:
    trainable, _ = optimizer.split_trainable(params, self.trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(trainable))

  def _boxed_state(self, rng) -> TrainState:
    return self._state_from_params(self._boxed_params(rng))

  def random_params(self, rng: jax.Array):
    """Freshly initialized parameters, created already sharded."""
    init = jax.jit(lambda r: nn.unbox(self._boxed_params(r)), out_shardings=self.shardings.params)
    return init(rng)

  def base_target(self):
    """Abstract parameters that `init.params_from` / random init provide (all of them here)."""
    return self.abstract.params

  def initial_state(self, init_cfg: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Step 0 of a fresh run: parameters from `config.init`, fresh optimizer state."""
    from llava_jax.train import init as init_lib  # init imports this module
    return self.state_from_params(init_lib.initial_params(init_cfg, self, rng))

  def saved(self, state: TrainState) -> dict:
    """What a checkpoint holds of `state` (everything here; LoRA leaves the frozen base out)."""
    return state.to_dict()

  def from_saved(self, saved: dict, init_cfg: ml_collections.ConfigDict,
                 rng: jax.Array) -> TrainState:
    """The state a restored checkpoint (shaped like `saved(abstract)`) stands for."""
    del init_cfg, rng  # the checkpoint holds everything
    return TrainState.from_dict(saved)

  def state_from_params(self, params) -> TrainState:
    """Step 0 with fresh optimizer state around `params` (any placement; placed here)."""
    params = place_params(params, self.abstract.params)
    make = jax.jit(self._state_from_params, in_shardings=(self.shardings.params,),
                   out_shardings=self.shardings, donate_argnums=0)
    return make(params)


def place_params(params, abstract_params):
  """Checks `params` against the expected tree (names, shapes) and puts it in its shardings."""
  got = flax.traverse_util.flatten_dict(params)
  want = flax.traverse_util.flatten_dict(abstract_params)
  missing = sorted("/".join(k) for k in want.keys() - got.keys())
  unexpected = sorted("/".join(k) for k in got.keys() - want.keys())
  if missing or unexpected:
    raise ValueError(f"parameter tree mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
  for k, w in want.items():
    if tuple(np.shape(got[k])) != tuple(w.shape):
      raise ValueError(f"parameter {'/'.join(k)}: shape {np.shape(got[k])}, expected {w.shape}")
  def put(x, w):
    x = x.astype(w.dtype) if isinstance(x, jax.Array) else np.asarray(x, w.dtype)
    return jax.device_put(x, w.sharding)
  return jax.tree.map(put, params, abstract_params)


def make_factory(config: ml_collections.ConfigDict, mesh, num_steps: int):
  """(StateFactory for model + optimizer on `mesh`, the learning-rate schedule)."""
  tx, schedule = optimizer.make_optimizer(config.optim, num_steps)
  model = model_lib.build(config.model, model_lib.platform_of(mesh.devices.flat))
  if config.lora.rank > 0:
    from llava_jax.train import lora_state  # it subclasses StateFactory
    return lora_state.LoraStateFactory(model, config, tx, mesh), schedule
  return StateFactory(model, config.model, tx, config.optim.trainable, mesh), schedule
