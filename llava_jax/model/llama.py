"""LLaMA-style decoder: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU, scanned layers.

Einsum letters: B batch, T query tokens, S key slots (T, or the KV-cache length), D width,
H query heads, K key/value heads, Dh head width, F mlp width, V vocabulary, L layers.

KV cache: a plain dict of arrays that the caller passes in and gets back (see `init_cache`):
  k, v         tuples of L arrays [B, K, S, Dh]: keys (after RoPE) and values per layer, slot
  segment_ids  int32[B, S]       segment id of each filled slot, 0 = empty or padding
  index        int32[]           next slot to write; the T new tokens go to [index, index + T)
A query in slot i attends to the slots j <= i whose segment id equals its own (non-zero) one,
so left-padded prompts (padding = segment 0) decode in one batch with explicit positions.

Why this layout (decode speed): heads-first [B, K, S, Dh] is the layout of the attention
einsums' key/value operand (batch dims b, k; then s, d), so a step reads the cache as stored
instead of transposing it; one array per layer lets each step write its T new slots in place
(`dynamic_update_slice` on a while-loop carry) instead of slicing a stacked [L, ...] array out
of a scan and writing it back (two extra passes over the whole cache per step). The cached
path therefore runs the layers as an unrolled Python loop over the scanned parameters.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.model import layers
from llava_jax.model import splash


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Built from the config schema (`llava_jax.config.schema.llm_config`), which holds the
  defaults; every field is given."""
  vocab_size: int
  dim: int
  layers: int
  heads: int
  kv_heads: int
  head_dim: int
  mlp_dim: int
  max_len: int
  norm_eps: float
  rope_theta: float
  rope_scaling_factor: float
  tie_embeddings: bool


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
  """An empty KV cache with `max_len` slots (see the module docstring)."""
  shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.layers))
  return dict(k=zeros, v=zeros,
              segment_ids=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))


def split_layer_params(stacked_layers: dict, num_layers: int) -> tuple:
  """The scanned blocks' stacked [L, ...] parameters as a tuple of L per-layer trees.

  Why: slicing layer l out of the stacked arrays inside a decode loop copies every weight on
  every step (read + write, then read again by the matmul: ~3x the weight traffic of a
  memory-bound step). Split once before the loop, the loop body reads each weight once.
  Put the tuple at params['llm']['layers'] in place of the stacked tree: every call takes it
  (without a cache the layers then run as an unrolled loop too); `llava_jax.load` keeps its
  parameters this way so that generation holds one copy of the weights.
  """
  return tuple(jax.tree.map(lambda p, l=l: p[l], stacked_layers) for l in range(num_layers))


def split_decoder_params(params: dict, num_layers: int) -> dict:
  """The LLaVA parameter tree with params['llm']['layers'] split; a no-op when it already is."""
  llm = params["llm"]
  if isinstance(llm["layers"], tuple):
    return params
  return dict(params, llm=dict(llm, layers=split_layer_params(llm["layers"], num_layers)))


class Attention(nn.Module):
  """Causal GQA self-attention with RoPE; optionally reads/writes one layer's KV cache."""
  cfg: DecoderConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  implementation: str
  platform: str = "cpu"   # of the target devices; splash is compiled on "tpu", else interpreted

  @nn.compact
  def __call__(self, x_BxTxD, cos_BxTxDh, sin_BxTxDh, mask_BxTxS, segment_ids_BxT, cache_index,
               layer_cache):
    cfg = self.cfg
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    q = layers.dense((cfg.heads, cfg.head_dim), ("embed", "heads", "head_dim"), name="q",
                     **kw)(x_BxTxD)
    k = layers.dense((cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="k",
                     **kw)(x_BxTxD)
    v = layers.dense((cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), name="v",
                     **kw)(x_BxTxD)
    q_BxTxHxDh = layers.apply_rope(q, cos_BxTxDh, sin_BxTxDh)
    k_BxTxKxDh = layers.apply_rope(k, cos_BxTxDh, sin_BxTxDh)
    q_BxTxHxDh = nn.with_logical_constraint(q_BxTxHxDh, ("batch", "length", "act_heads", None))
    new_cache = None
    if layer_cache is None and self.implementation == "splash" and splash.tiles(x_BxTxD.shape[1]):
      o_BxTxHxDh = splash.causal_attention(q_BxTxHxDh, k_BxTxKxDh, v, segment_ids_BxT,
                                           interpret=self.platform != "tpu")
    elif layer_cache is None:
      # Splash needs lengths in whole tiles (training checks data.max_len); scoring an odd
      # length (llava_jax.load(...).logits) takes the reference path instead.
      o_BxTxHxDh = layers.dot_product_attention(
          q_BxTxHxDh, k_BxTxKxDh, v, mask_BxTxS,
          "xla" if self.implementation == "splash" else self.implementation)
    else:
      # Write the T new keys/values into their slots (in place: only [B, K, T, Dh] moves),
      # then attend over the whole cache in its stored heads-first layout.
      def write(cache_BxKxSxDh, new_BxTxKxDh):
        new_BxKxTxDh = jnp.swapaxes(new_BxTxKxDh, 1, 2).astype(cache_BxKxSxDh.dtype)
        return jax.lax.dynamic_update_slice_in_dim(cache_BxKxSxDh, new_BxKxTxDh, cache_index,
                                                   axis=2)
      k_BxKxSxDh = write(layer_cache["k"], k_BxTxKxDh)
      v_BxKxSxDh = write(layer_cache["v"], v)
      new_cache = dict(k=k_BxKxSxDh, v=v_BxKxSxDh)
      if self.implementation in ("xla", "splash") or x_BxTxD.shape[1] == 1:
        o_BxTxHxDh = layers.cached_attention(q_BxTxHxDh, k_BxKxSxDh.astype(self.dtype),
                                             v_BxKxSxDh.astype(self.dtype), mask_BxTxS)
      else:  # cuDNN wants [B, S, K, Dh]: worth the transpose for a prefill, not a decode step.
        o_BxTxHxDh = layers.dot_product_attention(
            q_BxTxHxDh, jnp.swapaxes(k_BxKxSxDh, 1, 2).astype(self.dtype),
            jnp.swapaxes(v_BxKxSxDh, 1, 2).astype(self.dtype), mask_BxTxS, self.implementation)
    out = layers.dense(cfg.dim, ("heads", "head_dim", "embed"), n_in=2, name="o",
                       **kw)(o_BxTxHxDh)
    return out, new_cache


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: DecoderConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BxTxD):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = layers.dense(self.cfg.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x_BxTxD)
    up = layers.dense(self.cfg.mlp_dim, ("embed", "mlp"), name="up", **kw)(x_BxTxD)
    h_BxTxF = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return layers.dense(self.cfg.dim, ("mlp", "embed"), name="down", **kw)(h_BxTxF)


class DecoderBlock(nn.Module):
  """x + attn(attn_norm(x)); x + mlp(mlp_norm(x)). Scanned over layers (carry = x)."""
  cfg: DecoderConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  implementation: str
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x_BxTxD, cos_BxTxDh, sin_BxTxDh, mask_BxTxS, segment_ids_BxT, cache_index,
               layer_cache):
    cfg, dt, pdt = self.cfg, self.dtype, self.param_dtype
    h = layers.RMSNorm(cfg.norm_eps, dt, pdt, name="attn_norm")(x_BxTxD)
    h, new_cache = Attention(cfg, dt, pdt, self.implementation, self.platform, name="attn")(
        h, cos_BxTxDh, sin_BxTxDh, mask_BxTxS, segment_ids_BxT, cache_index, layer_cache)
    x_BxTxD = x_BxTxD + h
    h = layers.RMSNorm(cfg.norm_eps, dt, pdt, name="mlp_norm")(x_BxTxD)
    x_BxTxD = x_BxTxD + Mlp(cfg, dt, pdt, name="mlp")(h)
    return nn.with_logical_constraint(x_BxTxD, ("batch", "length", "act_embed")), new_cache


class Decoder(nn.Module):
  """Token embeddings -> scanned decoder blocks -> final norm -> LM head."""
  cfg: DecoderConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: str = "none"
  attention: str = "xla"
  scan_unroll: int = 1  # layers per loop iteration; cfg.layers = a fully unrolled loop
  platform: str = "cpu"  # of the target devices (kernels compiled on "tpu", else interpreted)

  def setup(self):
    cfg, dt, pdt = self.cfg, self.dtype, self.param_dtype
    self.embed = nn.Embed(
        cfg.vocab_size, cfg.dim, dtype=dt, param_dtype=pdt,
        embedding_init=layers.partitioned(layers.default_init, ("vocab", "embed")))
    block = DecoderBlock
    use_remat, policy = layers.remat_policy(self.remat)
    if use_remat:
      block = nn.remat(block, policy=policy, prevent_cse=False)
    if not 1 <= self.scan_unroll <= cfg.layers:
      raise ValueError(f"model.scan_unroll: {self.scan_unroll} is not in [1, {cfg.layers}] "
                       "(layers per loop iteration; 0 in the config picks one)")
    self.layers = nn.scan(
        block, variable_axes={"params": 0, layers.LORA: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * 5 + (0,), length=cfg.layers,
        unroll=self.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})(
            cfg, dt, pdt, self.attention, self.platform)
    self.final_norm = layers.RMSNorm(cfg.norm_eps, dt, pdt)
    if not cfg.tie_embeddings:
      self.lm_head = layers.dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dt,
                                  param_dtype=pdt)

  def _has_split_layers(self) -> bool:
    """True when the caller passed the layers as `split_layer_params`' tuple (inference)."""
    if self.is_initializing():
      return False
    return isinstance(nn.meta.unbox(self.variables["params"]["layers"]), (tuple, list))

  def _layer_loop(self, x_BxTxD, cos, sin, mask_BxTxS, segment_ids_BxT, index,
                  k_cache=None, v_cache=None):
    """The scanned blocks as an unrolled loop, each layer reading/writing its own cache arrays
    (when a cache is given).

    Takes the stacked parameters of `self.layers` (a static index picks layer l's slice) or,
    better inside a decode loop, the tuple from `split_layer_params` made once before it.
    """
    if k_cache is not None and len(k_cache) != self.cfg.layers:
      raise ValueError(f"llama.Decoder: the KV cache has {len(k_cache)} layers, the model "
                       f"{self.cfg.layers} (make it with init_cache)")
    layer_trees = nn.meta.unbox(self.variables["params"]["layers"])
    if not isinstance(layer_trees, (tuple, list)):
      layer_trees = split_layer_params(layer_trees, self.cfg.layers)
    block = DecoderBlock(self.cfg, self.dtype, self.param_dtype, self.attention, self.platform,
                         parent=None)
    # Adapters applied on the fly (LoRA, unmerged) stay stacked; layer l reads its slice.
    adapters = nn.meta.unbox(self.variables.get(layers.LORA, {}).get("layers"))
    new_k, new_v = [], []
    for l, layer_params in enumerate(layer_trees):
      layer_cache = None if k_cache is None else dict(k=k_cache[l], v=v_cache[l])
      variables = {"params": layer_params}
      if adapters is not None:
        variables[layers.LORA] = jax.tree_util.tree_map(lambda a, l=l: a[l], adapters)
      x_BxTxD, layer_cache = block.apply(
          variables, x_BxTxD, cos, sin, mask_BxTxS, segment_ids_BxT, index, layer_cache)
      if layer_cache is not None:
        new_k.append(layer_cache["k"])
        new_v.append(layer_cache["v"])
    return x_BxTxD, tuple(new_k), tuple(new_v)

  def embed_tokens(self, ids_BxT):
    x_BxTxD = self.embed(ids_BxT)
    return nn.with_logical_constraint(x_BxTxD, ("batch", "length", "act_embed"))

  def logits(self, h_BxTxD):
    """float32[B, T, V] from final-norm hidden states."""
    if self.cfg.tie_embeddings:
      logits = self.embed.attend(h_BxTxD)
    else:
      logits = self.lm_head(h_BxTxD)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, cache=None, return_hidden=False):
    """Embeddings [B, T, D] -> (logits float32[B, T, V] or hidden [B, T, D], updated cache).

    The cache is None (training / scoring) or a dict from `init_cache`.
    """
    cos, sin = layers.rope_tables(positions_BxT, self.cfg.head_dim, self.cfg.rope_theta,
                                  self.cfg.rope_scaling_factor, self.cfg.max_len)
    t = x_BxTxD.shape[1]
    if cache is None:
      slots_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids_BxT.shape)
      mask_BxTxS = layers.attention_mask(segment_ids_BxT, segment_ids_BxT, slots_BxT, slots_BxT)
      index, new_cache = None, None
    else:
      index = cache["index"]
      cache_segments_BxS = jax.lax.dynamic_update_slice_in_dim(
          cache["segment_ids"], segment_ids_BxT.astype(jnp.int32), index, axis=1)
      b, s = cache_segments_BxS.shape
      q_slots_BxT = jnp.broadcast_to(index + jnp.arange(t, dtype=jnp.int32), (b, t))
      k_slots_BxS = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
      mask_BxTxS = layers.attention_mask(segment_ids_BxT, cache_segments_BxS, q_slots_BxT,
                                         k_slots_BxS)
      new_cache = dict(segment_ids=cache_segments_BxS, index=index + t)
    if cache is None and self._has_split_layers():
      x_BxTxD, _, _ = self._layer_loop(x_BxTxD, cos, sin, mask_BxTxS, segment_ids_BxT, None)
    elif cache is None:
      x_BxTxD, _ = self.layers(x_BxTxD, cos, sin, mask_BxTxS, segment_ids_BxT, None, None)
    else:
      x_BxTxD, new_k, new_v = self._layer_loop(x_BxTxD, cos, sin, mask_BxTxS, None, index,
                                               cache["k"], cache["v"])
      new_cache.update(k=new_k, v=new_v)
    h_BxTxD = self.final_norm(x_BxTxD)
    out = h_BxTxD if return_hidden else self.logits(h_BxTxD)
    return out, new_cache
