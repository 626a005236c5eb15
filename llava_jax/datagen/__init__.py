"""Instruction data generation.

`python -m llava_jax.datagen`: GPT-assisted multimodal instructions (LLaVA Sec. 3) from captions
and boxes over an OpenAI-compatible API (annotations → context → prompts → client → parse →
generate). `python -m llava_jax.datagen.text`: FLAN-style text instructions (flan.py).
"""
