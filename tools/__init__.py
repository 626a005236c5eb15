"""Checkout-only tools, not installed with llava_jax: `python -m tools.make_demo` (from the
checkout) regenerates the shipped demo dataset in data/demo/."""
