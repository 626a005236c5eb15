"""The one start-up check of a training config: every bad value named with what is allowed.

    config_check.check(config)            # raises ConfigError listing every problem
    config_check.command_line_problem(argv, default_file)   # unknown preset / field on the CLI

`check` runs on the whole ConfigDict before anything heavy (mesh, data, compilation), so a typo
costs a second, not a compile. Checks that need the devices (batch divisible by the mesh) stay
in `train.loop.check_train_config`.
"""

from collections.abc import Callable
import importlib.util
import math
import pathlib
from typing import Any

import ml_collections

from llava_jax import errors

DTYPES = ("float32", "bfloat16", "float16")
MU_DTYPES = ("float32", "bfloat16")
REMAT = ("none", "dots", "full")
ATTENTION = ("xla", "cudnn", "splash")
FEATURE_SELECT = ("patch", "cls_patch")
ON_ERROR = ("skip", "strict")
ON_NONFINITE = ("stop", "skip")


class ConfigError(ValueError, errors.UserError):
  """Bad config values; the message has one line per problem: field, value, what is allowed."""

  def __init__(self, problems: list[str]):
    super().__init__("bad config:\n  " + "\n  ".join(problems))
    self.problems = problems


def _templates() -> tuple[str, ...]:
  from llava_jax.data import conversation  # no JAX; imported late so this module stays light
  return tuple(conversation.TEMPLATES)


def _placements() -> tuple[str, ...]:
  from llava_jax.data import conversation
  return tuple(conversation.PLACEMENTS)


def _image_aspects() -> tuple[str, ...]:
  from llava_jax.data import image  # no JAX
  return tuple(image.PREPROCESS_MODES)


def _one_of(allowed: Callable[[], tuple] | tuple) -> Callable[[Any], str | None]:
  def check(value):
    options = allowed() if callable(allowed) else allowed
    return None if value in options else f"expected one of {options}"
  return check


def _int_at_least(low: int, extra: tuple = ()) -> Callable[[Any], str | None]:
  def check(value):
    if value in extra and not isinstance(value, bool):
      return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      also = "".join(f" or {e}" for e in extra)
      return f"expected an integer >= {low}{also}"
    return None
  return check


def _number_in(low: float, high: float = float("inf"), low_open: bool = False):
  def check(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
      return f"expected a number in {'(' if low_open else '['}{low}, {high}]"
    if value < low or (low_open and value == low) or value > high:
      return f"expected a number in {'(' if low_open else '['}{low}, {high}]"
    return None
  return check


def _projector(value) -> str | None:
  from llava_jax.model import projector  # pylint: disable=g-import-not-at-top  # the one parser
  try:
    projector.num_linear_layers(value if isinstance(value, str) else "")
  except ValueError:
    return "expected 'linear' or 'mlpNx_gelu' (N >= 1)"
  return None


# field path -> check(value) -> None or what is allowed. Fields absent from a config are skipped
# (a notebook may build a partial one); every field here is in config/training.py's schema.
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _int_at_least(0),
    "model.dtype": _one_of(DTYPES),
    "model.param_dtype": _one_of(DTYPES),
    "model.remat": _one_of(REMAT),
    "model.attention": _one_of(ATTENTION),
    "model.projector": _projector,
    "model.scan_unroll": _int_at_least(0),
    "model.image_token_id": _int_at_least(0),
    "model.vision.feature_select": _one_of(FEATURE_SELECT),
    "model.vision.image_size": _int_at_least(1),
    "model.vision.patch_size": _int_at_least(1),
    "model.llm.vocab_size": _int_at_least(1),
    "model.llm.max_len": _int_at_least(1),
    "data.on_error": _one_of(ON_ERROR),
    "data.template": _one_of(_templates),
    "data.image_placement": _one_of(_placements),
    "data.image_aspect": _one_of(_image_aspects),
    "data.max_len": _int_at_least(1),
    "data.max_images": _int_at_least(1),
    "data.num_workers": _int_at_least(0),
    "data.worker_buffer_size": _int_at_least(1),
    "data.skip_reasons_shown": _int_at_least(0),
    "train.steps": _int_at_least(0),
    "train.epochs": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    "train.grad_accum_steps": _int_at_least(1),
    "train.on_nonfinite": _one_of(ON_NONFINITE),
    "train.loss_chunk_len": _int_at_least(0),
    "train.log_every_steps": _int_at_least(1),
    "optim.lr": _number_in(0.0),
    "optim.warmup_ratio": _number_in(0.0, 1.0),
    "optim.weight_decay": _number_in(0.0),
    "optim.b1": _number_in(0.0, 1.0),
    "optim.b2": _number_in(0.0, 1.0),
    "optim.eps": _number_in(0.0, low_open=True),
    "optim.mu_dtype": _one_of(MU_DTYPES),
    "checkpoint.every_steps": _int_at_least(1),
    "checkpoint.max_to_keep": _int_at_least(1),
    "mesh.data": _int_at_least(1, extra=(-1,)),
    "mesh.fsdp": _int_at_least(1, extra=(-1,)),
    "mesh.tensor": _int_at_least(1, extra=(-1,)),
}


def _get(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node


def problems(config: ml_collections.ConfigDict, part: str = "") -> list[str]:
  """One line per bad field: 'config.FIELD=VALUE: expected ...' (see `check` for `part`)."""
  prefix = f"{part}." if part else ""
  found = []
  for path, check in CHECKS.items():
    if not path.startswith(prefix):
      continue
    try:
      value = _get(config, path[len(prefix):])
    except KeyError:
      continue
    reason = check(value)
    if reason:
      found.append(f"config.{path}={value!r}: {reason}")
  return found


def check(config: ml_collections.ConfigDict, part: str = "") -> None:
  """Raises ConfigError naming every bad field, its value and what is allowed.

  `part` ("data", "model", ...): `config` is that sub-config alone, as library entry points
  (the data pipeline) receive it; they call this so notebooks that skip `main` are checked too.
  """
  found = problems(config, part)
  if found:
    raise ConfigError(found)


# ---------------------------------------------------------------- the command line


def load_config_file(path: str):
  """The recipe module at `path` (its `get_config(preset)` builds the config), loaded by path as
  ml_collections' config flags do, so the checkout's `configs/` need not be importable."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def command_line_problem(argv: list[str], default_file: str) -> str | None:
  """What is wrong with `--config=FILE[:PRESET]` and `--config.FIELD=VALUE` in `argv`, or None.

  ml_collections reads these while the flag is being defined and fails with a bare KeyError or
  AttributeError; this names the preset or field and lists what exists instead.
  """
  config_arg = default_file
  overrides = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      config_arg = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      config_arg = argv[i + 1]
    elif arg.startswith("--config."):
      overrides.append(arg[len("--config."):].split("=", 1)[0])
  path, _, preset = config_arg.partition(":")
  if not pathlib.Path(path).is_file():
    return f"--config={config_arg}: no config file {path!r}"
  module = load_config_file(path)
  presets = getattr(module, "RECIPES", None)
  if preset and presets is not None and preset not in presets:
    return (f"--config={config_arg}: unknown preset {preset!r}; {path} has presets "
            f"{tuple(presets)}")
  try:
    config = module.get_config(preset) if preset else module.get_config()
  except (KeyError, ValueError) as e:
    return f"--config={config_arg}: {e}"
  for field in overrides:
    node, walked = config, "config"
    for part in field.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (f"--config.{field}: unknown config field ({walked} has no {part!r}"
                + (f"; its fields: {', '.join(fields)})" if fields else ")"))
      node, walked = node[part], f"{walked}.{part}"
  return None
