"""What a resumed run may change: the config saved with a checkpoint against the new one.

  shape-changing fields (model sizes, projector, trainable set, parameter / moment dtypes)
      stop the run, naming each field with both values: the saved arrays cannot fit;
  schedule-changing fields (steps, epochs, batch size, learning rate, warmup)
      stop unless `train.allow_config_change=true`, and are logged when allowed;
  anything else (logging, checkpoint cadence, data workers...) is logged.
"""

from absl import logging
import ml_collections

from llava_jax import errors

SHAPE_FIELDS = tuple(
    [f"model.vision.{k}" for k in ("image_size", "patch_size", "width", "layers", "heads",
                                   "mlp_dim")] +
    [f"model.llm.{k}" for k in ("vocab_size", "dim", "layers", "heads", "kv_heads", "head_dim",
                                "mlp_dim", "tie_embeddings")] +
    ["model.projector", "model.param_dtype", "optim.trainable", "optim.mu_dtype",
     "lora.rank", "lora.targets", "lora.quant", "lora.quant_block"])
SCHEDULE_FIELDS = ("train.steps", "train.epochs", "train.batch_size", "optim.lr",
                   "optim.warmup_ratio")


class ConfigChangedError(ValueError, errors.UserError):
  """The new config cannot (or may not, without allow_config_change) resume the checkpoint."""


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = list(value) if isinstance(value, tuple) else value
  return out


def changes(saved: dict, new: dict) -> dict[str, tuple]:
  """field -> (saved value, new value) for every field that differs (missing: '<absent>')."""
  a, b = _flatten(saved), _flatten(new)
  return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
          if a.get(k, "<absent>") != b.get(k, "<absent>")}


def check(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, step: int,
          where: str) -> None:
  """Raises ConfigChangedError or logs what changed since the checkpoint at `step`."""
  found = changes(saved.to_dict(), config.to_dict())
  if not found:
    return
  line = lambda k: f"config.{k}: saved {found[k][0]!r}, now {found[k][1]!r}"
  shape = [line(k) for k in found if k in SHAPE_FIELDS]
  if shape:
    raise ConfigChangedError(
        f"cannot resume {where} (step {step}): these settings change parameter shapes:\n  "
        + "\n  ".join(shape) + "\nUse the saved values, or a new --workdir (init.params_from="
        "the old workdir loads its parameters into a new model).")
  schedule = [line(k) for k in found if k in SCHEDULE_FIELDS]
  allowed = config.train.allow_config_change
  if schedule and not allowed:
    raise ConfigChangedError(
        f"resuming {where} (step {step}) with a different schedule:\n  " + "\n  ".join(schedule)
        + "\nSet --config.train.allow_config_change=true to resume with it anyway.")
  other = [line(k) for k in found if k not in SHAPE_FIELDS and k not in SCHEDULE_FIELDS
           and k != "train.allow_config_change"]
  if schedule:
    logging.warning("resuming step %d with a changed schedule (train.allow_config_change=true):"
                    "\n  %s", step, "\n  ".join(schedule))
  if other:
    logging.info("resuming step %d with changed settings:\n  %s", step, "\n  ".join(other))
