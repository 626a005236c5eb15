"""llava_jax: LLaVA (Visual Instruction Tuning) in JAX/Flax."""

from llava_jax import quiet as _quiet

__version__ = "0.1.0"

# The library's edge: whoever imports llava_jax (a program, a notebook, plain Python) gets the
# start-up notices a newcomer would take for a fault dropped, before transformers is imported.
_quiet.install()


def __getattr__(name):
  # `llava_jax.load` imports JAX, the model and the converters; only pay for it when used, so
  # that light modules (e.g. data code in Grain workers) import fast.
  if name == "load":
    from llava_jax.infer.api import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'llava_jax' has no attribute {name!r}")
