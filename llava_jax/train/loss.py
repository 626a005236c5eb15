"""Next-token cross-entropy from final hidden states, never holding [B, T, V] float32 logits.

The LM head's logits are the largest activation of a LLaMA step (B·T·V floats: 1 GiB for
4×2048×32000 in fp32, and the same again for their gradient). Here the sequence is cut into
chunks; each chunk's logits are made, reduced to a log-sum-exp and a target logit, and dropped;
`jax.checkpoint` makes the backward pass recompute them chunk by chunk too.

Letters: B batch, T sequence, C chunk length, N number of chunks, D model width, V vocabulary.
Labels follow the HF convention: logits[:, t] predict labels[:, t + 1]; -100 is not supervised.
"""

from flax.core import meta
import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def next_token_targets(labels_BxT: jax.Array) -> jax.Array:
  """int32[B, T]: the label each position predicts (the next one); the last predicts nothing."""
  ignore_Bx1 = jnp.full_like(labels_BxT[:, :1], IGNORE_INDEX)
  return jnp.concatenate([labels_BxT[:, 1:], ignore_Bx1], axis=1)


def _chunk_loss(hidden_BxCxD, kernel_DxV, targets_BxC):
  """(sum of token losses, number of supervised tokens) of one chunk; logits in float32."""
  logits_BxCxV = jnp.einsum("bcd,dv->bcv", hidden_BxCxD, kernel_DxV.astype(hidden_BxCxD.dtype),
                            preferred_element_type=jnp.float32)
  supervised_BxC = targets_BxC != IGNORE_INDEX
  safe_targets_BxC = jnp.where(supervised_BxC, targets_BxC, 0)
  target_logit_BxC = jnp.take_along_axis(logits_BxCxV, safe_targets_BxC[..., None], axis=-1)[..., 0]
  token_loss_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1) - target_logit_BxC
  return (jnp.sum(jnp.where(supervised_BxC, token_loss_BxC, 0.0)),
          jnp.sum(supervised_BxC, dtype=jnp.int32))


def chunked_cross_entropy(hidden_BxTxD: jax.Array, kernel_DxV: jax.Array, labels_BxT: jax.Array,
                          *, chunk_len: int = 512) -> tuple[jax.Array, jax.Array]:
  """(sum of next-token losses, number of supervised tokens) through the LM head `kernel_DxV`.

  Args:
    hidden_BxTxD: float[B, T, D] final (normed) decoder hidden states, any float dtype; the head
      is applied in that dtype with float32 accumulation.
    kernel_DxV: float[D, V] LM head (the transposed embedding when embeddings are tied).
    labels_BxT: int[B, T] labels, aligned with the inputs (shifted here).
    chunk_len: sequence positions per chunk; T is padded up to a multiple of it.
  """
  batch, seq_len, dim = hidden_BxTxD.shape
  targets_BxT = next_token_targets(labels_BxT)
  chunk_len = min(chunk_len, seq_len)
  pad = -seq_len % chunk_len
  if pad:
    hidden_BxTxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
    targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
  num_chunks = (seq_len + pad) // chunk_len
  hidden_NxBxCxD = hidden_BxTxD.reshape(batch, num_chunks, chunk_len, dim).swapaxes(0, 1)
  targets_NxBxC = targets_BxT.reshape(batch, num_chunks, chunk_len).swapaxes(0, 1)

  # Recompute each chunk's logits in the backward pass instead of saving them.
  chunk_loss = jax.checkpoint(_chunk_loss)

  def body(carry, chunk):
    loss_sum, count = carry
    chunk_sum, chunk_count = chunk_loss(chunk[0], kernel_DxV, chunk[1])
    return (loss_sum + chunk_sum, count + chunk_count), None

  init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
  (loss_sum, count), _ = jax.lax.scan(body, init, (hidden_NxBxCxD, targets_NxBxC))
  return loss_sum, count


def dense_cross_entropy(logits_BxTxV: jax.Array, labels_BxT: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """The same (sum, count) from full logits: the reference the chunked version must match."""
  targets_BxT = next_token_targets(labels_BxT)
  supervised_BxT = targets_BxT != IGNORE_INDEX
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  target_logit_BxT = jnp.take_along_axis(
      logits_BxTxV, jnp.where(supervised_BxT, targets_BxT, 0)[..., None], axis=-1)[..., 0]
  token_loss_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1) - target_logit_BxT
  return (jnp.sum(jnp.where(supervised_BxT, token_loss_BxT, 0.0)),
          jnp.sum(supervised_BxT, dtype=jnp.int32))


def lm_head_kernel(llm_params) -> jax.Array:
  """float[D, V]: the LM head, or the transposed input embedding when they are tied."""
  if "lm_head" in llm_params:
    return meta.unbox(llm_params["lm_head"]["kernel"])
  return meta.unbox(llm_params["embed"]["embedding"]).T


def model_loss(model, params, batch, rng, *, chunk_len: int = 0):
  """(sum of next-token losses, number of supervised tokens): a `LossFn` for `step.train_step`.

  chunk_len = 0 applies the model's LM head to every position (full [B, T, V] logits);
  chunk_len > 0 takes the final hidden states and runs `chunked_cross_entropy`. A batch whose
  pixels hold no images (M = 0) is text only: the vision tower is not run at all.
  """
  pixels = batch["pixels"] if batch["pixels"].shape[1] else None
  out = model.apply({"params": params}, batch["input_ids"], pixels,
                    segment_ids=batch["segment_ids"], positions=batch["positions"],
                    return_hidden=chunk_len > 0, rngs={"dropout": rng})
  if chunk_len > 0:
    return chunked_cross_entropy(out, lm_head_kernel(params["llm"]), batch["labels"],
                                 chunk_len=chunk_len)
  return dense_cross_entropy(out, batch["labels"])
