"""Where a fresh run's parameters come from (`config.init`): random, a checkpoint, a stage-1 run.

  init.params_from     ""  → random init; else a model directory (`convert from-hf`), a training
                       workdir (its latest committed step) or a llava-hf directory
  init.projector_from  ""  → keep; else a training workdir (stage 1) whose `projector` replaces ours

A resumed run ignores both: its checkpoint has everything.
"""

import jax
import ml_collections

from llava_jax.checkpoint import workdirs
from llava_jax.train import state as state_lib


def initial_params(init_cfg: ml_collections.ConfigDict, factory: state_lib.StateFactory,
                   rng: jax.Array):
  """The full parameter tree, placed in the factory's shardings."""
  target = factory.base_target()
  if init_cfg.params_from:
    # Imported late: reading llava-hf directories pulls in transformers.
    from llava_jax.checkpoint import sources
    params = sources.read_checkpoint(init_cfg.params_from, target=target,
                                     dtype=factory.model_cfg.param_dtype).params
    params = state_lib.place_params(params, target)
  else:
    params = factory.random_params(rng)
  if init_cfg.projector_from:
    restored = workdirs.restore_params(init_cfg.projector_from,
                                         {"projector": target["projector"]})
    params = {**params, "projector": restored["projector"]}
  return params
