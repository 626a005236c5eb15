"""Building blocks shared by the vision tower and the decoder.

Einsum letters:
  B batch, T query length, S key length (cache slots), D model width,
  H query heads, K key/value heads, G query heads per key/value head (H = K * G),
  Dh head width.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.model import quant

Dtype = Any

# HF initialises every linear layer and embedding with normal(0.02).
default_init = nn.initializers.normal(stddev=0.02)


def partitioned(init, axes: Sequence[str | None]):
  """An initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, tuple(axes))


class Dense(nn.Module):
  """y = x . kernel (+ bias), contracting the last `n_in` dims of x with the leading kernel dims.

  Not nn.DenseGeneral: with multi-dim features it builds a flat kernel and reshapes it, and
  under a mesh Flax then applies the logical constraint of the full shape to the flat one.
  """
  features: tuple[int, ...]
  axes: tuple[str | None, ...]   # logical names of the kernel: input dims, then output dims
  n_in: int = 1
  use_bias: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, adapter_x=None):
    """`adapter_x`: what the adapter reads instead of x (LoRA dropout, lora.adapter_dropout)."""
    in_shape = x.shape[x.ndim - self.n_in:]
    dtype = self.dtype or x.dtype
    if self.has_variable("params", QUANTIZED + "_qvalue"):
      # A frozen quantized kernel (QLoRA, llava_jax/model/quant.py), dequantized in the step.
      kernel = quant.dequantize(self.get_variable("params", QUANTIZED + "_qvalue"),
                                self.get_variable("params", QUANTIZED + "_scale"), dtype)
    else:
      kernel = self.param("kernel", partitioned(default_init, self.axes),
                          tuple(in_shape) + self.features, self.param_dtype)
    contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
    if self.has_variable(LORA, "a"):
      y = y + lora_delta((x if adapter_x is None else adapter_x).astype(dtype),
                         self.get_variable(LORA, "a"),
                         self.get_variable(LORA, "b"), self.get_variable(LORA, "scale"), contract)
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros_init(), self.axes[self.n_in:]),
                        self.features, self.param_dtype)
      y = y + bias.astype(dtype).reshape((1,) * (y.ndim - len(self.features)) + self.features)
    return y


# Variable collection of low-rank adapters (llava_jax/model/lora.py): when a Dense layer finds
# {'a', 'b', 'scale'} there, it adds scale * (x . a) . b to its output; the kernel is untouched.
LORA = "lora"
QUANTIZED = "kernel"   # a quantized kernel is stored as kernel_qvalue + kernel_scale


def lora_delta(x, a, b, scale, contract):
  """scale * (x . a) . b, the adapter term of a Dense layer; a: [in..., R], b: [R, out...]."""
  dtype = x.dtype
  h = jax.lax.dot_general(x, a.astype(dtype), (contract, ((), ())))
  h = jax.lax.dot_general(h, b.astype(dtype), (((h.ndim - 1,), (0,)), ((), ())))
  return h * scale.astype(dtype)


def dense(features, axes: Sequence[str | None], *, n_in=1, use_bias=True, dtype=None,
          param_dtype=jnp.float32, name=None) -> Dense:
  """A Dense layer; `features` an int or a tuple (e.g. (heads, head_dim))."""
  features = (features,) if isinstance(features, int) else tuple(features)
  return Dense(features, tuple(axes), n_in, use_bias, dtype, param_dtype, name=name)


def layer_norm(axis_name: str, eps: float, dtype, param_dtype, name=None) -> nn.LayerNorm:
  """LayerNorm as torch computes it (two-pass variance), with logical axes on scale and bias."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=partitioned(nn.initializers.ones_init(), (axis_name,)),
      bias_init=partitioned(nn.initializers.zeros_init(), (axis_name,)), name=name)


class RMSNorm(nn.Module):
  """LLaMA RMSNorm: normalise in float32, cast back, then scale (HF order of operations)."""
  eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD):
    scale_D = self.param("scale", partitioned(nn.initializers.ones_init(), ("embed",)),
                         (x_BxTxD.shape[-1],), self.param_dtype)
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    scale = scale_D.reshape((1,) * (x.ndim - 1) + (-1,)).astype(self.dtype)
    return scale * x.astype(self.dtype)


def rope_tables(positions_BxT, head_dim: int, theta: float, scaling_factor: float, max_len: int):
  """cos/sin tables float32[B, T, Dh] in HF's rotate-half layout (both halves share freqs).

  Computed for every position below `max_len` and gathered: XLA:CPU fuses a direct cos(p * f)
  into each consumer and recomputes it per head and per layer. Positions outside the table
  give NaN (loud), not a clamped angle.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  # Linear scaling ("position interpolation") divides positions, as HF's "linear" rope type.
  t_P = jnp.arange(max_len, dtype=jnp.float32) / scaling_factor
  freqs_PxF = jnp.einsum("p,f->pf", t_P, inv_freq)
  emb_PxDh = jnp.concatenate([freqs_PxF, freqs_PxF], axis=-1)
  def lookup(table_PxDh):
    return jnp.take(table_PxDh, positions_BxT, axis=0, mode="fill", fill_value=jnp.nan)
  return lookup(jnp.cos(emb_PxDh)), lookup(jnp.sin(emb_PxDh))


def apply_rope(x_BxTxHxDh, cos_BxTxDh, sin_BxTxDh):
  """x * cos + rotate_half(x) * sin, computed in float32."""
  x = x_BxTxHxDh.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos_BxTxDh[:, :, None, :], sin_BxTxDh[:, :, None, :]
  return (x * cos + rotated * sin).astype(x_BxTxHxDh.dtype)


def attention_mask(q_segment_BxT, k_segment_BxS, q_slot_BxT=None, k_slot_BxS=None):
  """bool[B, T, S]: same non-zero segment and, when slots are given, key slot <= query slot.

  Slots are cache indices (or plain positions in the sequence); without them the mask is
  bidirectional (vision tower).
  """
  mask = (q_segment_BxT[:, :, None] == k_segment_BxS[:, None, :])
  mask &= (q_segment_BxT[:, :, None] != 0)
  if q_slot_BxT is not None:
    mask &= k_slot_BxS[:, None, :] <= q_slot_BxT[:, :, None]
  return mask


def dot_product_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS, implementation="xla"):
  """Softmax attention with grouped key/value heads. Returns [B, T, H, Dh] in q's dtype.

  `mask_BxTxS` is None (no masking) or bool. Rows with no allowed key (padding queries) get a
  uniform distribution instead of NaNs; their outputs are never used.
  """
  if implementation == "cudnn":
    mask = None
    if mask_BxTxS is not None:
      # A fully masked row (a padding query) would give NaNs that leak into later layers'
      # padded keys/values; let it attend everywhere instead, as the xla path effectively does.
      mask = (mask_BxTxS | ~jnp.any(mask_BxTxS, axis=-1, keepdims=True))[:, None, :, :]
    return jax.nn.dot_product_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask=mask,
                                        implementation="cudnn")
  if implementation != "xla":
    raise ValueError(f"model.attention: unknown implementation {implementation!r} "
                     "(expected 'xla', 'cudnn' or 'splash')")
  b, t, h, dh = q_BxTxHxDh.shape
  kv = k_BxSxKxDh.shape[2]
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, kv, h // kv, dh)
  scores = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxDh, k_BxSxKxDh,
                      preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(dh))
  if mask_BxTxS is not None:
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxDh.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxDh)
  return out.reshape(b, t, h, dh)


def cached_attention(q_BxTxHxDh, k_BxKxSxDh, v_BxKxSxDh, mask_BxTxS):
  """`dot_product_attention` (xla) against a KV cache stored heads-first [B, K, S, Dh].

  Both einsums take the cache as stored (batch dims b, k lead; s, d follow), so a decode step
  moves no cache-sized buffer besides the reads; only the small q and output are transposed.
  """
  b, t, h, dh = q_BxTxHxDh.shape
  kv = k_BxKxSxDh.shape[1]
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, kv, h // kv, dh)
  scores = jnp.einsum("btkgd,bksd->bkgts", q_BxTxKxGxDh, k_BxKxSxDh,
                      preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(dh))
  scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxKxSxDh.dtype)
  out = jnp.einsum("bkgts,bksd->btkgd", probs, v_BxKxSxDh)
  return out.reshape(b, t, h, dh)


def remat_policy(name: str):
  """(use_remat, jax checkpoint policy) for the config's `remat` string."""
  if name == "none":
    return False, None
  if name == "dots":
    return True, jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  if name == "full":
    return True, jax.checkpoint_policies.nothing_saveable
  raise ValueError(f"model.remat: unknown policy {name!r} (expected 'none', 'dots' or 'full')")
