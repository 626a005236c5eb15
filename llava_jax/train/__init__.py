"""llava_jax.train."""
