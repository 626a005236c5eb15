"""Training checkpoints: Orbax CheckpointManager over `WORKDIR/checkpoints/<step>/`.

Each step directory holds three items saved together:
  state      {'step', 'params', 'opt_state'} (StandardSave; restored straight into shardings)
  meta       JSON: the full config (`config.to_dict()`)
  data_iter  the Grain iterator state, so a resumed run sees exactly the remaining batches

Orbax writes a step into a temporary directory and renames it once every item is complete, so a
process killed mid-save leaves no step that `latest_step()` would load. `WORKDIR/config.json` is
the config of the latest run on the workdir (a different earlier one is kept as
`config.previous-N.json`); inference reads parameters with `restore_params`.

Verification: once a step is committed, process 0 writes `<step>/checksums.json`: the size and
SHA-256 of every file of the step, and the SHA-256 of its config. Every restore (`restore_latest`
for training, `restore_params` for `convert to-hf`, `llava_jax.load` and `init.params_from`)
checks them first. A damaged step (a file changed, truncated, emptied or missing) is named with
its file, moved to `WORKDIR/checkpoints.damaged/` (nothing is deleted) and the newest intact step
is used instead, with a warning; `strict=True` (`checkpoint.strict_restore`) refuses instead. A
step without checksums (saved by an older version, or killed between commit and checksums) is
restored unverified, with a warning, and counts as damaged if Orbax cannot read it.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
from typing import Any, Callable

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from llava_jax import errors

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
STATE, META, DATA_ITER = "state", "meta", "data_iter"
CHECKSUMS = "checksums.json"
DAMAGED = "checkpoints.damaged"


class CheckpointError(RuntimeError, errors.UserError):
  """A checkpoint step that cannot be used; names the step directory and, if known, the file."""

  def __init__(self, step_dir, reason: str, file: str | None = None):
    where = f"{step_dir}/{file}" if file else f"{step_dir}"
    super().__init__(f"checkpoint {where}: {reason}")
    self.step_dir, self.file, self.reason = pathlib.Path(step_dir), file, reason


def config_sha256(config_dict: dict) -> str:
  return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _step_files(step_dir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*")
                if p.is_file() and p.name != CHECKSUMS)


def write_checksums(step_dir, config_dict: dict) -> None:
  """`step_dir/checksums.json` for a committed step (atomic: a torn file is never read)."""
  step_dir = pathlib.Path(step_dir)
  files = _step_files(step_dir)
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    digests = list(pool.map(lambda f: _file_sha256(step_dir / f), files))
  record = {"config_sha256": config_sha256(config_dict),
            "files": {f: {"size": (step_dir / f).stat().st_size, "sha256": d}
                      for f, d in zip(files, digests)}}
  tmp = step_dir / (CHECKSUMS + ".tmp")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
  os.replace(tmp, step_dir / CHECKSUMS)


def verify_step(step_dir) -> bool:
  """Checks a step against its checksums: True if verified, False if it has none.

  Raises CheckpointError naming the first missing, resized or changed file.
  """
  step_dir = pathlib.Path(step_dir)
  if not step_dir.is_dir():
    raise CheckpointError(step_dir, "the step directory is missing")
  path = step_dir / CHECKSUMS
  if not path.is_file():
    return False
  try:
    record = json.loads(path.read_text())
    expected = record["files"]
  except (ValueError, KeyError) as e:
    raise CheckpointError(step_dir, f"unreadable checksums ({e})", CHECKSUMS) from None
  for name, want in sorted(expected.items()):
    file = step_dir / name
    if not file.is_file():
      raise CheckpointError(step_dir, "file missing", name)
    size = file.stat().st_size
    if size != want["size"]:
      raise CheckpointError(step_dir, f"size {size} bytes, saved as {want['size']} (truncated or "
                            "overwritten)", name)
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    names = sorted(expected)
    for name, digest in zip(names, pool.map(lambda n: _file_sha256(step_dir / n), names)):
      if digest != expected[name]["sha256"]:
        raise CheckpointError(step_dir, "checksum mismatch (the data changed after saving)", name)
  return True


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
  manager = ocp.CheckpointManager(checkpoints_dir(workdir), options=options,
                                  item_handlers=handlers)
  manager.llava_unsealed = {}   # step -> config dict: saved by this process, checksums pending
  return manager


def step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
  return pathlib.Path(manager.directory) / str(step)


def seal(manager: ocp.CheckpointManager) -> None:
  """Waits for pending saves, then writes the checksums of the steps this process saved."""
  manager.wait_until_finished()
  unsealed = getattr(manager, "llava_unsealed", {})
  committed = set(manager.all_steps()) if unsealed else set()
  for step, config_dict in sorted(unsealed.items()):
    if step in committed and jax.process_index() == 0:
      write_checksums(step_dir(manager, step), config_dict)
  unsealed.clear()


def save(manager: ocp.CheckpointManager, step: int, state: dict, config: ml_collections.ConfigDict,
         data_iter=None, force: bool = False) -> bool:
  """Starts an (async) save of state + config (+ data iterator) at `step`.

  The previous save is finished (Orbax would wait for it anyway) and sealed with checksums
  first; call `seal(manager)` after the last save.
  """
  seal(manager)
  items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(config.to_dict())}
  if data_iter is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
  saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
  if saved and hasattr(manager, "llava_unsealed"):
    manager.llava_unsealed[step] = config.to_dict()
  return saved


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, data_iter=None
            ) -> dict:
  """State at `step`, restored into the shardings of `abstract_state`'s ShapeDtypeStructs.

  `data_iter`, when given, is set to the saved iterator position in place.
  """
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE]


def _move_aside(step_path: pathlib.Path) -> pathlib.Path:
  """A damaged step goes to WORKDIR/checkpoints.damaged/<step>[-N]: kept, but never loaded."""
  target_dir = step_path.parent.parent / DAMAGED
  target_dir.mkdir(exist_ok=True)
  target = target_dir / step_path.name
  n = 1
  while target.exists():
    target, n = target_dir / f"{step_path.name}-{n}", n + 1
  shutil.move(str(step_path), str(target))
  return target


def _verify_and_load(step_path: pathlib.Path, load: Callable[[], Any]) -> Any:
  """load() after verifying the step; an unverified step's read errors count as damage."""
  return _load_verified(step_path, verify_step(step_path), load)


def _load_verified(step_path: pathlib.Path, verified: bool, load: Callable[[], Any]) -> Any:
  if not verified:
    logging.warning("checkpoint %s has no %s (saved by an older version, or the run was killed "
                    "before writing it): restoring it unverified", step_path, CHECKSUMS)
  try:
    return load()
  except Exception as e:  # noqa: BLE001 - Orbax raises many types for a damaged step.
    if verified:
      raise   # the files are as saved: not damage, a real error
    raise CheckpointError(step_path, f"unreadable ({type(e).__name__}: {e})") from e


def restore_latest(manager: ocp.CheckpointManager, abstract_state: dict, data_iter=None, *,
                   strict: bool = False,
                   check: Callable[[int, pathlib.Path], None] | None = None
                   ) -> tuple[int | None, dict | None]:
  """(step, state) of the newest intact step, or (None, None) when there is no step at all.

  Each step is verified (`verify_step`) and `check(step, step_dir)` (e.g. a config comparison)
  runs before its arrays are read. A damaged step is named, moved aside, and the next older one
  tried, with a warning; `strict` raises CheckpointError instead. None intact: CheckpointError.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    path = step_dir(manager, step)
    try:
      verified = verify_step(path)
      if check is not None:
        check(step, path)
      state = _load_verified(path, verified,
                             lambda step=step: restore(manager, step, abstract_state, data_iter))
    except CheckpointError as e:
      if strict:
        raise CheckpointError(e.step_dir, e.reason + " (checkpoint.strict_restore=true: not "
                              "falling back to an older step)", e.file) from None
      moved = _move_aside(path) if jax.process_index() == 0 else path
      damaged.append(f"step {step}: {e} (moved to {moved})")
      logging.warning("%s; moved to %s; trying the next older step", e, moved)
      manager.reload()
      continue
    if damaged:
      message = f"restored step {step} after skipping damaged steps:\n  " + "\n  ".join(damaged)
      logging.warning(message)
      print(message, flush=True)
    return step, state
  if damaged:
    raise CheckpointError(manager.directory, "no intact step:\n  " + "\n  ".join(damaged))
  return None, None


def write_config(workdir, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json; a different one already there is kept as config.previous-N.json."""
  path = pathlib.Path(workdir) / CONFIG
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
  if path.is_file() and path.read_text() != text:
    n = 1
    while (kept := path.with_name(f"config.previous-{n}.json")).exists():
      n += 1
    os.replace(path, kept)
  tmp = path.with_name(CONFIG + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _candidate_steps(path) -> tuple[list[pathlib.Path], bool]:
  """Step directories to try, newest first, and whether `path` was a workdir (fallback allowed)."""
  path = pathlib.Path(path).absolute()
  if (path / STATE).is_dir() or (path / CHECKSUMS).is_file():
    return [path], False
  if checkpoints_dir(path).is_dir():
    # Only finalized steps count; a save killed half-way is never picked.
    steps = ocp.path.step.checkpoint_steps(checkpoints_dir(path))
    return [checkpoints_dir(path) / str(s) for s in sorted(steps, reverse=True)], True
  raise FileNotFoundError(f"{path}: neither a training workdir with a committed checkpoint "
                          f"(WORKDIR/{CHECKPOINTS}/<step>/) nor a step directory")


def _step_dir(path) -> pathlib.Path:
  """A step directory from a workdir (its latest committed step) or a step directory itself."""
  candidates, _ = _candidate_steps(path)
  if not candidates:
    raise FileNotFoundError(f"{path}: neither a training workdir with a committed checkpoint "
                            f"(WORKDIR/{CHECKPOINTS}/<step>/) nor a step directory")
  return candidates[0]


def _newest_intact(path, load: Callable[[pathlib.Path], Any], strict: bool) -> Any:
  """load(step_dir) of the newest verified step of a workdir (or of the step directory given)."""
  candidates, workdir = _candidate_steps(path)
  if not candidates:
    _step_dir(path)   # raises, naming the path
  damaged = []
  for candidate in candidates:
    try:
      result = _verify_and_load(candidate, lambda candidate=candidate: load(candidate))
    except CheckpointError as e:
      if strict or not workdir:
        raise
      damaged.append(str(e))
      logging.warning("%s; trying the next older step", e)
      continue
    if damaged:
      logging.warning("using %s: newer steps are damaged:\n  %s", candidate,
                      "\n  ".join(damaged))
    return result
  raise CheckpointError(checkpoints_dir(path), "no intact step:\n  " + "\n  ".join(damaged))


def read_config(path) -> ml_collections.ConfigDict:
  """The full training config stored with a checkpoint (workdir or step directory)."""
  return _read_meta(_step_dir(path))


def _read_meta(step_path: pathlib.Path) -> ml_collections.ConfigDict:
  meta = step_path / META
  # The JSON handler writes `metadata` inside the item directory.
  files = [meta / "metadata"] if (meta / "metadata").is_file() else sorted(meta.glob("*"))
  if not files:
    raise FileNotFoundError(f"{meta}: no config saved with this checkpoint")
  try:
    return ml_collections.ConfigDict(json.loads(files[0].read_text()))
  except ValueError as e:
    raise CheckpointError(step_path, f"config unreadable ({e})", f"{META}/{files[0].name}"
                          ) from None


def restore_params(path, target: Any = None, *, strict: bool = False) -> Any:
  """Only the parameters of a training checkpoint (workdir → newest intact step, or a step dir).

  `target`: optional params tree of `jax.ShapeDtypeStruct` with shardings to restore into;
  without it, leaves come back as numpy arrays with the saved dtypes. Optimizer state is not read.
  The step is verified first; from a workdir a damaged newest step falls back to the next older
  intact one with a warning (`strict=True` raises CheckpointError instead).
  """
  return _newest_intact(path, lambda step_path: _restore_params(step_path, target), strict)


def read_config_and_params(path, target_for: Callable[[ml_collections.ConfigDict], Any] = None,
                           *, strict: bool = False) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, params) of the same newest intact step; `target_for(config)` builds `target`."""
  def load(step_path):
    config = _read_meta(step_path)
    return config, _restore_params(step_path, target_for(config) if target_for else None)
  return _newest_intact(path, load, strict)


def _restore_params(step_path: pathlib.Path, target: Any) -> Any:
  state_dir = step_path / STATE
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
