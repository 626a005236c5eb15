"""llava_jax: LLaVA (Visual Instruction Tuning) in JAX/Flax."""

__version__ = "0.1.0"
