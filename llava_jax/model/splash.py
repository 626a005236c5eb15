"""Causal self-attention through the Pallas TPU splash-attention kernel (model.attention=splash).

The kernel never materializes the [T, S] scores (blocked online softmax, forward and backward),
skips fully masked blocks of the causal mask, and keeps packed samples apart with segment ids.
Grouped-query attention maps onto its multi-query form: one kernel call per key/value head
(vmapped), its G query heads sharing that head. Built for non-TPU devices (`interpret=True`,
from the model's `platform`) it runs in Pallas' interpreter (slow; for tests). Under a mesh (training traces with one, see `sharding.with_activation_rules`) the
kernel runs per shard through `shard_map`: rows over the batch axes, key/value heads over the
axis `act_heads` maps to.
"""

import functools

import flax.linen as nn
import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
import jax.numpy as jnp
from jax.sharding import PartitionSpec

BLOCK_CHOICES = (512, 256, 128)


def tiles(length: int) -> bool:
  """Whether a sequence of `length` tokens tiles into the kernel's blocks."""
  return length % BLOCK_CHOICES[-1] == 0   # the larger choices are multiples of it


def block_size(length: int) -> int:
  """The largest tile dividing the sequence (the kernel's tiles are multiples of 128 lanes)."""
  for block in BLOCK_CHOICES:
    if length % block == 0:
      return block
  raise ValueError(f"model.attention='splash': sequence length {length} is not a multiple of "
                   f"{BLOCK_CHOICES[-1]} (set data.max_len to one)")


def _kernel(length: int, group: int, interpret: bool):
  # Built per trace, not cached: its mask tables become arrays of the trace that builds it.
  block = block_size(length)
  sizes = kernel_lib.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
      block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  causal = mask_lib.MultiHeadMask([mask_lib.CausalMask((length, length))] * group)
  return kernel_lib.make_splash_mqa(causal, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)


def _attend(q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, segment_ids_BxT, *, interpret: bool):
  _, _, group, length, _ = q_BxKxGxTxDh.shape
  kernel = _kernel(length, group, interpret)
  per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
  per_row = jax.vmap(per_head, in_axes=(0, 0, 0, kernel_lib.SegmentIds(0, 0)))
  return per_row(q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh,
                 kernel_lib.SegmentIds(q=segment_ids_BxT, kv=segment_ids_BxT))


def causal_attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, segment_ids_BxT, *, interpret: bool):
  """softmax(q k^T / sqrt(Dh)) v within each segment, causally; [B, T, H, Dh] in q's dtype.

  Padding (segment 0) attends to padding only; its outputs are never used. `interpret`: run
  Pallas' interpreter (targets other than TPU) instead of the Mosaic kernel.
  """
  b, t, h, dh = q_BxTxHxDh.shape
  kv = k_BxTxKxDh.shape[2]
  q = (q_BxTxHxDh * jnp.asarray(dh ** -0.5, q_BxTxHxDh.dtype)).reshape(
      b, t, kv, h // kv, dh).transpose(0, 2, 3, 1, 4)
  k = jnp.swapaxes(k_BxTxKxDh, 1, 2).astype(q.dtype)
  v = jnp.swapaxes(v_BxTxKxDh, 1, 2).astype(q.dtype)
  segment_ids = segment_ids_BxT.astype(jnp.int32)
  attend = functools.partial(_attend, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    rows, heads = nn.logical_to_mesh_axes(("batch", "act_heads"))
    qkv_spec = PartitionSpec(rows, heads)
    attend = jax.shard_map(attend, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec,
                                                         PartitionSpec(rows)),
                           out_specs=qkv_spec, check_vma=False)
  o_BxKxGxTxDh = attend(q, k, v, segment_ids)
  return o_BxKxGxTxDh.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)
