"""Drops library start-up notices that a newcomer would take for a fault; importing llava_jax
installs the filters (llava_jax/__init__.py), so programs, notebooks and plain Python all get them.

Only these exact notices go, and only at their own level, so real warnings still show:
- JAX's INFO "Unable to initialize backend 'tpu'": it probes for a TPU on every machine without one.
- transformers' "PyTorch was not found": we use its tokenizers and configs, never its torch models
  (torch is only the parity reference of the tests).
"""

import logging

_NOTICES = (
    ("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'tpu'"),
    ("transformers", logging.WARNING, "PyTorch was not found"),
)


class _DropNotice(logging.Filter):

  def __init__(self, level: int, prefix: str):
    super().__init__()
    self.level = level
    self.prefix = prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > self.level or not record.getMessage().startswith(self.prefix)


def install() -> None:
  """Adds the filters to the loggers that emit the notices (idempotent; before their imports)."""
  for name, level, prefix in _NOTICES:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropNotice) and f.prefix == prefix for f in logger.filters):
      logger.addFilter(_DropNotice(level, prefix))
