"""llava_jax.datagen."""
