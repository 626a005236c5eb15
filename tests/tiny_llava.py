"""Moved to tests/tiny.py (`tiny.write_model_dir`); this name stays for branches in flight."""

from tiny import write_model_dir as write_tiny_model_dir  # noqa: F401
