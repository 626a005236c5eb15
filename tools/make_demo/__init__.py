"""The shipped demo dataset: procedural images with true captions/instructions + its tokenizer.

Regenerate with `python -m tools.make_demo --out=data/demo`.
"""

from tools.make_demo.build import Demo
from tools.make_demo.build import build_demo
from tools.make_demo.build import write_demo

__all__ = ["Demo", "build_demo", "write_demo"]
