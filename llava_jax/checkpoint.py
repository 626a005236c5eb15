"""Training checkpoints: Orbax CheckpointManager over `WORKDIR/checkpoints/<step>/`.

Each step directory holds three items saved together:
  state      {'step', 'params', 'opt_state'} (StandardSave; restored straight into shardings)
  meta       JSON: the full config (`config.to_dict()`)
  data_iter  the Grain iterator state, so a resumed run sees exactly the remaining batches

Orbax writes a step into a temporary directory and renames it once every item is complete, so a
process killed mid-save leaves no step that `latest_step()` would load. `WORKDIR/config.json` is
the config of the latest run on the workdir; inference reads parameters with `restore_params`.
"""

import json
import pathlib
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
STATE, META, DATA_ITER = "state", "meta", "data_iter"


def checkpoints_dir(workdir) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / CHECKPOINTS


def make_manager(workdir, ckpt_cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """The manager for `WORKDIR/checkpoints` (`ckpt_cfg`: `max_to_keep`, `async_save`)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=ckpt_cfg.max_to_keep, enable_async_checkpointing=ckpt_cfg.async_save,
      # Leftovers of a save that was killed are removed, never read.
      cleanup_tmp_directories=True)
  handlers = {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler(),
              DATA_ITER: grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(checkpoints_dir(workdir), options=options,
                               item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: dict, config: ml_collections.ConfigDict,
         data_iter=None, force: bool = False) -> bool:
  """Starts an (async) save of state + config (+ data iterator) at `step`."""
  items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(config.to_dict())}
  if data_iter is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, data_iter=None
            ) -> dict:
  """State at `step`, restored into the shardings of `abstract_state`'s ShapeDtypeStructs.

  `data_iter`, when given, is set to the saved iterator position in place.
  """
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE]


def write_config(workdir, config: ml_collections.ConfigDict) -> None:
  path = pathlib.Path(workdir) / CONFIG
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def _step_dir(path) -> pathlib.Path:
  """A step directory from a workdir (its latest committed step) or a step directory itself."""
  path = pathlib.Path(path).absolute()
  if (path / STATE).is_dir():
    return path
  if checkpoints_dir(path).is_dir():
    # Only finalized steps count; a save killed half-way is never picked.
    latest = ocp.path.step.latest_step_metadata(checkpoints_dir(path),
                                                ocp.path.step.standard_name_format())
    if latest is not None:
      return pathlib.Path(latest.path)
  raise FileNotFoundError(f"{path}: neither a training workdir with a committed checkpoint "
                          f"(WORKDIR/{CHECKPOINTS}/<step>/) nor a step directory")


def read_config(path) -> ml_collections.ConfigDict:
  """The full training config stored with a checkpoint (workdir or step directory)."""
  meta = _step_dir(path) / META
  # The JSON handler writes `metadata` inside the item directory.
  files = [meta / "metadata"] if (meta / "metadata").is_file() else sorted(meta.glob("*"))
  if not files:
    raise FileNotFoundError(f"{meta}: no config saved with this checkpoint")
  return ml_collections.ConfigDict(json.loads(files[0].read_text()))


def restore_params(path, target: Any = None) -> Any:
  """Only the parameters of a training checkpoint (workdir → latest committed step, or a step dir).

  `target`: optional params tree of `jax.ShapeDtypeStruct` with shardings to restore into;
  without it, leaves come back as numpy arrays with the saved dtypes. Optimizer state is not read.
  """
  state_dir = _step_dir(path) / STATE
  handler = ocp.PyTreeCheckpointHandler()
  try:
    if target is None:
      saved = handler.metadata(state_dir).tree["params"]
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args}, partial_restore=True))
  finally:
    handler.close()
  return restored["params"]
