"""The training step: pure functions of (state, batch, rng), jitted once by the loop.

Letters: B global batch, A micro-batches (gradient accumulation), T sequence length.

The loss is the sum of token cross-entropies over supervised tokens divided by the number of
supervised tokens in the whole global batch, so it (and its gradient) is the same however the
batch is split into micro-batches or sharded over devices.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llava_jax import sharding
from llava_jax.train import loss as loss_lib
from llava_jax.train import optimizer
from llava_jax.train.state import StateFactory
from llava_jax.train.state import TrainState

Batch = dict[str, jax.Array]
# (model, params, batch, rng) -> (sum of token losses, number of supervised tokens); e.g.
# `loss.model_loss` (full logits, or chunked over the sequence from the final hidden states).
LossFn = Callable[[nn.Module, Any, Batch, jax.Array], tuple[jax.Array, jax.Array]]


def num_supervised(labels_BxT: jax.Array) -> jax.Array:
  """Supervised next-token targets in the batch (the loss normalizer)."""
  return jnp.sum(loss_lib.next_token_targets(labels_BxT) != loss_lib.IGNORE_INDEX,
                 dtype=jnp.int32)


def split_micro_batches(batch: Batch, num_micro: int) -> Batch:
  """[B, ...] → [A, B/A, ...], micro-batch a = rows a, a+A, a+2A, ...

  Interleaving keeps each device's rows on that device (the batch is sharded in contiguous
  blocks), so splitting needs no communication.
  """
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {num_micro} micro-batches")
    return x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               trainable: Sequence[str], grad_accum_steps: int = 1,
               loss_fn: LossFn = loss_lib.model_loss
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update from one global batch.

  Only the trainable subtree is differentiated and updated; frozen parameters pass through
  untouched. A non-finite loss or gradient leaves params and optimizer state unchanged and
  reports `finite=False` (the loop decides whether to stop).
  """
  trainable_params, frozen_params = optimizer.split_trainable(state.params, trainable)
  normalizer = jnp.maximum(num_supervised(batch["labels"]), 1).astype(jnp.float32)
  rng = jax.random.fold_in(rng, state.step)

  def normalized_loss(params, micro_batch, micro_rng):
    loss_sum, _ = loss_fn(model, optimizer.merge(params, frozen_params), micro_batch, micro_rng)
    return loss_sum / normalizer

  grad_fn = jax.value_and_grad(normalized_loss)
  if grad_accum_steps == 1:
    loss, grads = grad_fn(trainable_params, batch, rng)
  else:
    def accumulate(carry, micro):
      loss_acc, grads_acc = carry
      micro_batch, index = micro
      loss, grads = grad_fn(trainable_params, micro_batch, jax.random.fold_in(rng, index))
      return (loss_acc + loss, jax.tree.map(jnp.add, grads_acc, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, trainable_params)
    micro_batches = split_micro_batches(batch, grad_accum_steps)
    (loss, grads), _ = jax.lax.scan(
        accumulate, (jnp.zeros((), jnp.float32), zeros),
        (micro_batches, jnp.arange(grad_accum_steps)))

  grad_norm = optax.tree.norm(grads)
  updates, new_opt_state = tx.update(grads, state.opt_state, trainable_params)
  new_trainable = optax.apply_updates(trainable_params, updates)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(
      step=state.step + 1,
      params=optimizer.merge(keep_if_finite(new_trainable, trainable_params), frozen_params),
      opt_state=keep_if_finite(new_opt_state, state.opt_state))
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "lr": jnp.asarray(schedule(state.step), jnp.float32),
      "supervised_tokens": normalizer.astype(jnp.int32),
      "tokens": jnp.sum(batch["segment_ids"] > 0, dtype=jnp.int32),
      "finite": finite,
  }
  return new_state, metrics


def jit_train_step(config, factory: StateFactory, schedule, mesh,
                   loss_chunk_len: int | None = None):
  """The loop's jitted train step (the benchmark times this one): state sharded by its logical
  axes and donated, the batch split over data×fsdp, the model's activation constraints active.
  `loss_chunk_len` overrides `config.train.loss_chunk_len`."""
  if loss_chunk_len is None:
    loss_chunk_len = config.train.loss_chunk_len
  step_fn = functools.partial(
      train_step, model=factory.model, tx=factory.tx, schedule=schedule,
      trainable=factory.trainable, grad_accum_steps=config.train.grad_accum_steps,
      loss_fn=functools.partial(loss_lib.model_loss, chunk_len=loss_chunk_len))
  return jax.jit(
      sharding.with_activation_rules(step_fn, mesh),
      in_shardings=(factory.shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
      out_shardings=(factory.shardings, sharding.replicated(mesh)),
      donate_argnums=0)
