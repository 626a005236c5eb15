r"""Trains LLaVA: `python -m llava_jax.main --config=configs/finetune.py[:PRESET] [--workdir=DIR]`.

Any config field can be overridden, e.g. `--config.train.steps=100 --config.mesh.fsdp=-1`.
Re-running on a workdir with checkpoints resumes from the latest one.
"""

import logging
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from llava_jax import errors
from llava_jax import quiet
from llava_jax import sharding
from llava_jax.config import check as config_check

# At import, not in main(): Grain's spawned workers re-import this module, and print too.
quiet.install()

_REPO_ROOT = pathlib.Path(__file__).absolute().parents[1]
DEFAULT_CONFIG = str(_REPO_ROOT / "configs" / "finetune.py")

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  # ml_collections reads --config while the flag is defined: name a bad preset or field first.
  if problem := config_check.command_line_problem(sys.argv[1:], DEFAULT_CONFIG):
    sys.exit(f"error: {problem}")
  config_flags.DEFINE_config_file(
      "config", DEFAULT_CONFIG,
      "Training config file, optionally with ':PRESET'.", lock_config=True)
  flags.DEFINE_string(
      "workdir", None, "Checkpoints, metrics and config go here "
      "(default: ./workdir/<config name>-<preset>).")


def default_workdir(config_arg: str) -> str:
  """'configs/finetune.py:llava15_7b' → 'workdir/finetune-llava15_7b' (preset 'demo' if none)."""
  path, _, preset = config_arg.partition(":")
  return str(pathlib.Path("workdir") / f"{pathlib.Path(path).stem}-{preset or 'demo'}")


class _QuietOrbax(logging.Filter):
  """Drops Orbax's INFO chatter (a dozen lines per save); its warnings and errors still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config_check.check(FLAGS.config)   # before anything heavy: a typo costs a second
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  sharding.initialize_distributed()
  # Imported after distributed init: nothing may touch the JAX backend before it.
  from llava_jax.train import loop
  workdir = FLAGS.workdir or default_workdir(
      config_flags.get_config_filename(FLAGS["config"]))
  print(f"workdir: {pathlib.Path(workdir).absolute()}", flush=True)
  loop.run(FLAGS.config, workdir)


if __name__ == "__main__":
  define_flags()
  app.run(errors.one_line(main))
