"""Task evaluators behind `python -m llava_jax.evaluate` (scienceqa, llava_bench, text)."""
