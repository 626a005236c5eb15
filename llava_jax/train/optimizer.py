"""The Optax optimizer, its schedule, and which parameters it trains (path regexes from config).

Stages differ only in `optim.trainable`: parameters whose '/'-joined path fully matches one of
the regexes train; all others are frozen. The optimizer only ever sees the trainable subtree, so
frozen parameters have no optimizer state and no gradient is computed for them.
"""

from collections.abc import Sequence
import math
import re

from flax import traverse_util
import jax.numpy as jnp
import ml_collections
import optax


def path_name(path: tuple[str, ...]) -> str:
  return "/".join(path)


def split_trainable(params, patterns: Sequence[str]):
  """params → (trainable, frozen): two nested dicts with disjoint leaves, each a subtree of params.

  Leaves are kept as they are (arrays, abstract values or `nn.LogicallyPartitioned` boxes).
  """
  regexes = [re.compile(p) for p in patterns]
  flat = traverse_util.flatten_dict(params)
  is_trainable = {k: any(r.fullmatch(path_name(k)) for r in regexes) for k in flat}
  trainable = {k: v for k, v in flat.items() if is_trainable[k]}
  frozen = {k: v for k, v in flat.items() if not is_trainable[k]}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen):
  """Inverse of `split_trainable`."""
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


def check_trainable(params, patterns: Sequence[str]) -> None:
  """Every pattern must select something, and something must train (a typo would freeze all)."""
  names = [path_name(k) for k in traverse_util.flatten_dict(params)]
  for p in patterns:
    if not any(re.fullmatch(p, n) for n in names):
      raise ValueError(f"config.optim.trainable: pattern {p!r} matches no parameter; "
                       f"parameter paths look like {names[:3]}")
  if not patterns:
    raise ValueError("config.optim.trainable is empty: nothing would train")


def warmup_steps(optim: ml_collections.ConfigDict, total_steps: int) -> int:
  # As Hugging Face's Trainer (LLaVA's): ceil(ratio * total).
  return math.ceil(optim.warmup_ratio * total_steps)


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int,
                  peak: float | None = None) -> optax.Schedule:
  """Linear warmup from 0 to `peak` (default `optim.lr`), then cosine decay to 0 at
  `total_steps` (LLaVA's)."""
  warmup = warmup_steps(optim, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr if peak is None else peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
  """(optax transformation for the trainable subtree, its learning-rate schedule)."""
  schedule = make_schedule(optim, total_steps)
  adamw = lambda lr: optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                 mu_dtype=jnp.dtype(optim.mu_dtype),
                                 weight_decay=optim.weight_decay)
  update = adamw(schedule)
  groups = tuple(tuple(g) for g in optim.lr_groups)
  if groups:
    transforms = {"default": update}
    transforms.update({str(i): adamw(make_schedule(optim, total_steps, peak))
                       for i, (_, peak) in enumerate(groups)})
    update = optax.multi_transform(transforms, lambda params: lr_group_labels(params, groups))
  tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm) if optim.grad_clip_norm > 0
      else optax.identity(),
      update)
  return tx, schedule


def lr_group_labels(params, groups: Sequence[tuple[str, float]]):
  """The tree of params with each leaf replaced by its lr group ('0', '1', ... or 'default')."""
  flat = traverse_util.flatten_dict(params)
  def label(key):
    name = path_name(key)
    return next((str(i) for i, (p, _) in enumerate(groups) if re.fullmatch(p, name)), "default")
  return traverse_util.unflatten_dict({k: label(k) for k in flat})
