"""The shipped demo dataset: procedural images with true captions/instructions + its tokenizer.

Regenerate with `python -m llava_jax.data.demo --out=data/demo`.
"""

from llava_jax.data.demo.build import Demo
from llava_jax.data.demo.build import build_demo
from llava_jax.data.demo.build import write_demo

__all__ = ["Demo", "build_demo", "write_demo"]
