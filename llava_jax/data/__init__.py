"""llava_jax.data."""
