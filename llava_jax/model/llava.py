"""LLaVA: CLIP vision tower -> projector -> image features merged at placeholders -> decoder.

Einsum letters: B batch, T tokens, M images per row, H/W image height/width, N image tokens per
image, D decoder width, V vocabulary.

Entry points (all through `model.apply(params, ..., method=...)`):
  __call__(input_ids, pixels, segment_ids=None, positions=None, cache=None, return_hidden=False)
      Training / scoring / prefill. Returns logits float32[B, T, V] (or the final-norm hidden
      states [B, T, D] with return_hidden=True, for a loss chunked over the vocabulary: apply
      `method=Llava.lm_logits` to chunks of them). With a `cache` (from `init_cache`) it
      returns (output, new_cache) instead: this is the prefill of generation.
  decode(input_ids, positions, cache, segment_ids=None, return_hidden=False)
      Text-only continuation against a cache: returns (output, new_cache). One token per step
      ([B, 1]) inside a jitted `lax.while_loop`; positions are explicit so left-padded rows
      continue from their own lengths. segment_ids defaults to 1 (a real token).
  lm_logits(hidden) -> float32[..., V].
  init_cache(batch, max_len, dtype) -> the KV cache dict documented in `llama.py`.

Image placeholders: the pipeline expands each <image> into N = num_image_tokens copies of
`image_token_id`. The j-th run of N placeholders in row b takes the features of pixels[b, j];
placeholders beyond M * N reuse the last feature (static shapes; the data pipeline guarantees
counts). Rows without placeholders ignore their pixels.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from llava_jax.model import llama
from llava_jax.model import projector as projector_lib
from llava_jax.model import vision as vision_lib


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
  """Built by `model.model_dataclass` from the config schema, which holds every default."""
  vision: vision_lib.VisionConfig
  llm: llama.DecoderConfig
  projector: str
  image_token_id: int
  dtype: str
  param_dtype: str
  remat: str
  attention: str
  scan_unroll: int   # decoder layers per scan iteration (model_dataclass resolves the config's 0)
  platform: str      # of the target devices: TPU runs Pallas kernels compiled, others interpret

  @property
  def num_image_tokens(self) -> int:
    v = self.vision
    return vision_lib.image_tokens(v.image_size, v.patch_size, v.feature_select)


def merge_image_features(input_ids_BxT, text_BxTxD, images_BxMxNxD, image_token_id: int):
  """Replace placeholder embeddings by image features, in order, with a static gather."""
  b, m, n, d = images_BxMxNxD.shape
  if m * n == 0:
    return text_BxTxD
  images_BxMNxD = images_BxMxNxD.reshape(b, m * n, d).astype(text_BxTxD.dtype)
  is_image_BxT = input_ids_BxT == image_token_id
  # The k-th placeholder of a row (counting from 0) reads flattened image feature k.
  rank_BxT = jnp.cumsum(is_image_BxT.astype(jnp.int32), axis=1) - 1
  rank_BxT = jnp.clip(rank_BxT, 0, m * n - 1)
  gathered_BxTxD = jnp.take_along_axis(images_BxMNxD, rank_BxT[:, :, None], axis=1)
  return jnp.where(is_image_BxT[:, :, None], gathered_BxTxD, text_BxTxD)


def default_positions(input_ids_BxT):
  b, t = input_ids_BxT.shape
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


class Llava(nn.Module):
  """The LLaVA model; parameters {'vision', 'projector', 'llm'} as in the README contract."""
  cfg: LlavaConfig

  def setup(self):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.vision = vision_lib.VisionTower(cfg.vision, dt, pdt, cfg.remat)
    self.projector = projector_lib.Projector(cfg.projector, cfg.llm.dim, dt, pdt)
    self.llm = llama.Decoder(cfg.llm, dt, pdt, cfg.remat, cfg.attention, cfg.scan_unroll,
                           cfg.platform)

  def encode_images(self, pixels_BxMxHxWx3):
    """Projected image features [B, M, N, D]."""
    b, m, h, w, c = pixels_BxMxHxWx3.shape
    feats = self.vision(pixels_BxMxHxWx3.reshape(b * m, h, w, c))
    feats = self.projector(feats)
    return feats.reshape(b, m, feats.shape[1], feats.shape[2])

  def embed(self, input_ids_BxT, pixels_BxMxHxWx3=None):
    """Token embeddings with image features at the placeholders: [B, T, D]."""
    x_BxTxD = self.llm.embed_tokens(input_ids_BxT)
    if pixels_BxMxHxWx3 is None:
      return x_BxTxD
    images_BxMxNxD = self.encode_images(pixels_BxMxHxWx3)
    return merge_image_features(input_ids_BxT, x_BxTxD, images_BxMxNxD, self.cfg.image_token_id)

  def __call__(self, input_ids, pixels, segment_ids=None, positions=None, cache=None,
               return_hidden=False):
    """int32[B, T], float32[B, M, H, W, 3] (or None) -> logits float32[B, T, V] (see module doc)."""
    if segment_ids is None:
      segment_ids = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
      positions = default_positions(input_ids)
    x_BxTxD = self.embed(input_ids, pixels)
    out, new_cache = self.llm(x_BxTxD, positions, segment_ids, cache, return_hidden)
    if self.is_initializing() and return_hidden and not self.cfg.llm.tie_embeddings:
      self.llm.logits(out)  # Creates the LM head's parameters.
    return out if cache is None else (out, new_cache)

  def decode(self, input_ids, positions, cache, segment_ids=None, return_hidden=False):
    """Text tokens [B, T] continuing a cached sequence -> (logits [B, T, V], new cache)."""
    if segment_ids is None:
      segment_ids = jnp.ones(input_ids.shape, jnp.int32)
    x_BxTxD = self.llm.embed_tokens(input_ids)
    return self.llm(x_BxTxD, positions, segment_ids, cache, return_hidden)

  def lm_logits(self, hidden_BxTxD):
    return self.llm.logits(hidden_BxTxD)

  def init_cache(self, batch: int, max_len: int, dtype=None):
    """Zeros; call as `model.init_cache(...)` on the unbound module (needs no parameters)."""
    return llama.init_cache(self.cfg.llm, batch, max_len, jnp.dtype(dtype or self.cfg.dtype))
