"""llava_jax.convert."""
