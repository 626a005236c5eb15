"""Next-token sampling: greedy, temperature, top-k and top-p, per row, jittable.

Every knob is a per-row array so one decode batch can serve requests with different settings
(the server batches concurrent requests). Row b is greedy where `temperature[b] == 0`.
Randomness is one key per row folded with the step number, so a row's tokens depend only on
its own seed, never on which other rows share the batch.

Letters: B = batch, V = vocabulary.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick the next token. `temperature == 0` is greedy; `top_k == 0` and `top_p == 1`
  switch those filters off."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def stack_params(params: list[SamplingParams]) -> dict[str, np.ndarray]:
  """Per-row arrays for `sample` from one SamplingParams per row."""
  return dict(
      temperature=np.array([p.temperature for p in params], np.float32),
      top_k=np.array([p.top_k for p in params], np.int32),
      top_p=np.array([p.top_p for p in params], np.float32),
      seed=np.array([p.seed for p in params], np.uint32),
  )


def _filtered_logits(logits_BxV, temperature_B, top_k_B, top_p_B):
  """Temperature-scaled logits with everything outside top-k / the top-p nucleus at -inf."""
  vocab = logits_BxV.shape[-1]
  safe_t_B = jnp.where(temperature_B > 0, temperature_B, 1.0)
  scaled_BxV = logits_BxV / safe_t_B[:, None]
  sorted_BxV = jnp.flip(jnp.sort(scaled_BxV, axis=-1), axis=-1)  # descending
  # top-k: keep values >= the k-th largest (k = 0 keeps all).
  k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, vocab), vocab)
  kth_B = jnp.take_along_axis(sorted_BxV, (k_B - 1)[:, None], axis=-1)[:, 0]
  # top-p over the top-k survivors: keep the smallest prefix whose mass reaches p. A token is
  # kept if the mass strictly before it is < p, so the most likely token always survives.
  rank_V = jnp.arange(vocab)
  sorted_BxV = jnp.where(rank_V[None, :] < k_B[:, None], sorted_BxV, -jnp.inf)
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  keep_BxV = mass_before_BxV < top_p_B[:, None]
  # The smallest kept sorted value is the threshold for the unsorted logits.
  last_kept_B = jnp.sum(keep_BxV, axis=-1) - 1
  pth_B = jnp.take_along_axis(sorted_BxV, last_kept_B[:, None], axis=-1)[:, 0]
  threshold_B = jnp.maximum(kth_B, pth_B)
  return jnp.where(scaled_BxV >= threshold_B[:, None], scaled_BxV, -jnp.inf)


def sample(logits_BxV: jax.Array, step: jax.Array, *, temperature, top_k, top_p, seed) -> jax.Array:
  """int32[B] next tokens from float[B, V] logits at decode step `step` (int scalar, or int[B]
  when rows are at different steps, as under continuous batching).

  temperature/top_k/top_p/seed: per-row arrays [B] (see `stack_params`).
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

  def draw(_):
    filtered_BxV = _filtered_logits(logits_BxV, temperature, top_k, top_p)
    step_B = jnp.broadcast_to(jnp.asarray(step, jnp.int32), seed.shape)
    keys_B = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.key(s), t))(seed, step_B)
    drawn_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BxV).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn_B, greedy_B)

  # The sort over V is the costly part: skip it when every row is greedy.
  return jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy_B, None)
