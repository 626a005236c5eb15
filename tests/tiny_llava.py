"""A tiny random LLaVA model directory (our layout) with the demo tokenizer, for end-to-end
tests of the tools that load a checkpoint (serve, evaluate). Its text is nonsense."""

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from configs import common
from llava_jax import model as model_lib
from llava_jax.convert import model_dir

REPO = pathlib.Path(__file__).resolve().parent.parent


def write_tiny_model_dir(path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
  """`path`/{params/, config.json, tokenizer/, preprocessor_config.json}; one layer per tower
  so that compiling generation stays quick on CPU."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  cfg = common.model_config("tiny")
  cfg.llm.layers = 1
  cfg.vision.layers = 1
  module = model_lib.build(cfg)
  size = cfg.vision.image_size
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32),
                          jnp.zeros((1, 1, size, size, 3), jnp.float32))
  model_dir.save_params(path / "params", nn.meta.unbox(variables)["params"])
  model_dir.write_config(path, cfg)
  model_dir.copy_tokenizer(REPO / "data" / "demo" / "tokenizer", path / "tokenizer")
  model_dir.write_preprocessor(path, model_dir.default_preprocessor(cfg))
  return path
