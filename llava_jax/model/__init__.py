"""llava_jax.model."""
