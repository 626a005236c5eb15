"""`llava_jax.load` for the programs (chat, serve, webui, bench.serve): a missing or unreadable
checkpoint becomes one `LoadError` line that says what to fix, not a traceback."""

import os

from llava_jax import errors


class LoadError(Exception):
  """A checkpoint (or adapter) that is missing or cannot be loaded; the message names it."""


def load_checked(ckpt: str | None, adapter: str | None = None, merge_adapter: bool = True):
  """`llava_jax.load(ckpt, adapter=adapter, merge=merge_adapter)` with an error message that says what is missing."""
  if not ckpt:
    raise LoadError("--ckpt is required (a model directory, training workdir or llava-hf dir)")
  for path in (ckpt, adapter):
    if path and not os.path.exists(path):
      raise LoadError(f"checkpoint not found: {path}")
  from llava_jax.infer import api  # deferred: loading pulls in the whole model stack

  try:
    return api.load(ckpt, adapter=adapter, merge=merge_adapter)
  except (FileNotFoundError, ValueError, errors.UserError) as e:
    raise LoadError(f"cannot load checkpoint {ckpt}{f' with adapter {adapter}' if adapter else ''}"
                    f": {e}") from None
