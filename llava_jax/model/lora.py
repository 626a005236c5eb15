"""Low-rank adapters (LoRA) for the Dense layers, kept in a tree of their own.

The base parameters stay as they are; adapters live in the `lora` variable collection, in the
same module paths as the layers they adapt (`layers.Dense` adds scale * (x . a) . b):

  {'llm': {'layers': {'attn': {'q': {'a': [L, D, R], 'b': [L, R, H, Dh], 'scale': [L]}}}}}

Letters: L stacked (scanned) layers, R rank, the rest as the adapted kernel. `a` starts as
PEFT's kaiming-uniform, `b` at zero, so a fresh adapter leaves the model unchanged; scale is
alpha / rank. Targets are chosen by regexes that fully match the layer path ('llm/layers/attn/q').
"""

from collections.abc import Sequence
import contextlib
import dataclasses
import math
import re

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.model import layers

LORA = layers.LORA
DROPOUT_RNG = "dropout"   # the rng stream the train step passes (eval and generation pass none)
# LLaVA's find_all_linear_names: every linear layer of the language model but the LM head.
DECODER_TARGETS = ("llm/layers/(attn/(q|k|v|o)|mlp/(gate|up|down))",)


@dataclasses.dataclass(frozen=True)
class DenseLayer:
  """One Dense layer as the model calls it: where it is and how its kernel is laid out."""
  path: tuple[str, ...]      # module path, e.g. ('llm', 'layers', 'attn', 'q')
  n_in: int                  # leading kernel dims contracted with x
  kernel_shape: tuple[int, ...]   # stored shape, [L] first when the layer is scanned
  kernel_axes: tuple[str | None, ...]
  stacked: bool              # scanned: one slice per layer along the first dim

  @property
  def name(self) -> str:
    return "/".join(self.path)

  @property
  def in_shape(self) -> tuple[int, ...]:
    start = 1 if self.stacked else 0
    return self.kernel_shape[start:start + self.n_in]

  @property
  def last_in_axis(self) -> int:
    """The kernel dim QLoRA's scale blocks tile (the last input dim)."""
    return (1 if self.stacked else 0) + self.n_in - 1

  @property
  def out_shape(self) -> tuple[int, ...]:
    return self.kernel_shape[(1 if self.stacked else 0) + self.n_in:]


def dense_layers(model: nn.Module, *init_args) -> dict[str, DenseLayer]:
  """Every Dense layer of `model`, by path name, found by tracing `model.init` (no allocation)."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.Dense) and context.method_name == "__call__":
      seen[context.module.path] = context.module.n_in
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    boxed = jax.eval_shape(model.init, jax.random.key(0), *init_args)["params"]
  flat = traverse_util.flatten_dict(boxed)
  found = {}
  for path, n_in in seen.items():
    kernel = flat.get(path + ("kernel",))
    if kernel is None:   # a module traced outside the parameter tree (a detached copy)
      continue
    names = tuple(kernel.names)
    found["/".join(path)] = DenseLayer(path, n_in, tuple(kernel.value.shape), names,
                                       stacked=names[0] == "layers")
  return found


def select(all_layers: dict[str, DenseLayer], targets: Sequence[str], rank: int
           ) -> list[DenseLayer]:
  """The layers `targets` match; each regex must match one, and `rank` fit every one."""
  if not targets:
    raise ValueError("config.lora.targets is empty: no layer would get an adapter")
  chosen = {}
  for pattern in targets:
    hits = [l for name, l in all_layers.items() if re.fullmatch(pattern, name)]
    if not hits:
      raise ValueError(f"config.lora.targets: {pattern!r} matches no Dense layer; layer paths "
                       f"look like {sorted(all_layers)[:4]}")
    chosen.update({l.name: l for l in hits})
  for l in chosen.values():
    width = min(math.prod(l.in_shape), math.prod(l.out_shape))
    if not 0 < rank <= width:
      raise ValueError(f"config.lora.rank={rank} does not fit layer {l.name} "
                       f"(kernel {l.kernel_shape}: rank must be in [1, {width}])")
  return sorted(chosen.values(), key=lambda l: l.name)


def init_adapters(rng: jax.Array, targets: Sequence[DenseLayer], rank: int, alpha: float,
                  dtype=jnp.float32) -> dict:
  """Fresh adapters (logically partitioned boxes) for `targets`, nested by module path."""
  tree = {}
  for i, l in enumerate(targets):
    stack = l.kernel_shape[:1] if l.stacked else ()
    stack_axes = l.kernel_axes[:1] if l.stacked else ()
    in_axes = l.kernel_axes[len(stack):len(stack) + l.n_in]
    out_axes = l.kernel_axes[len(stack) + l.n_in:]
    bound = 1.0 / math.sqrt(math.prod(l.in_shape))   # PEFT: kaiming_uniform_(a=sqrt(5))
    a = jax.random.uniform(jax.random.fold_in(rng, i), stack + l.in_shape + (rank,), dtype,
                           -bound, bound)
    tree[l.path] = {
        "a": nn.LogicallyPartitioned(a, stack_axes + in_axes + ("lora_rank",)),
        "b": nn.LogicallyPartitioned(jnp.zeros(stack + (rank,) + l.out_shape, dtype),
                                     stack_axes + ("lora_rank",) + out_axes),
        "scale": nn.LogicallyPartitioned(jnp.full(stack, alpha / rank, jnp.float32),
                                         stack_axes),
    }
  flat = {path + (k,): v for path, leaves in tree.items() for k, v in leaves.items()}
  return traverse_util.unflatten_dict(flat)


def adapted_layers(adapters: dict) -> list[tuple[str, ...]]:
  """Module paths that carry an adapter."""
  flat = traverse_util.flatten_dict(adapters)
  return sorted({k[:-1] for k in flat if k[-1] == "a"})


def delta_kernel(a, b, scale):
  """scale * a . b in the kernel's layout: [L?, in..., R] x [L?, R, out...] -> [L?, in..., out...]."""
  stacked = scale.ndim == 1
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if stacked:
    d = jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a32, b32)
    return d * scale.reshape((-1,) + (1,) * (d.ndim - 1))
  return jnp.tensordot(a32, b32, axes=1) * scale


def merge(params: dict, adapters: dict) -> dict:
  """Base parameters with every adapter folded into its kernel (W + scale * a . b), same dtypes."""
  flat = traverse_util.flatten_dict(params)
  ad = traverse_util.flatten_dict(adapters)
  for path in adapted_layers(adapters):
    key = path + ("kernel",)
    if key not in flat:
      raise ValueError(f"adapter for {'/'.join(path)}: the base model has no such layer")
    w = flat[key]
    a, b, scale = ad[path + ("a",)], ad[path + ("b",)], ad[path + ("scale",)]
    if a.shape[-1] != b.shape[scale.ndim] or a.shape[:scale.ndim] != w.shape[:scale.ndim]:
      raise ValueError(f"adapter for {'/'.join(path)}: a {tuple(a.shape)}, b {tuple(b.shape)} "
                       f"do not fit the base kernel {tuple(w.shape)} (an adapter trained for "
                       "another base?)")
    d = delta_kernel(a, b, scale)
    if tuple(d.shape) != tuple(w.shape):
      raise ValueError(f"adapter for {'/'.join(path)} makes a {tuple(d.shape)} update; the base "
                       f"kernel is {tuple(w.shape)} (an adapter trained for another base?)")
    flat[key] = (jnp.asarray(w, jnp.float32) + d).astype(w.dtype)
  return traverse_util.unflatten_dict(flat)


def adapter_dropout(rate: float):
  """A context in which adapted Dense layers drop their adapter's input (PEFT's lora_dropout:
  y = x . W + scale * (dropout(x) . a) . b) when the apply has a `dropout` rng; without one
  (eval, generation) nothing is dropped. The base matmul always sees x as it is."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"config.lora.dropout={rate}: must be in [0, 1)")
  if rate == 0.0:
    return contextlib.nullcontext()

  def drop_adapter_input(next_fun, args, kwargs, context):
    m = context.module
    if (isinstance(m, layers.Dense) and context.method_name == "__call__"
        and m.has_variable(LORA, "a") and m.has_rng(DROPOUT_RNG)):
      x = args[0]
      keep = jax.random.bernoulli(m.make_rng(DROPOUT_RNG), 1.0 - rate, x.shape)
      kwargs = dict(kwargs, adapter_x=jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)))
    return next_fun(*args, **kwargs)

  return nn.intercept_methods(drop_adapter_input)


class LoraModel:
  """`model` whose `apply` takes the adapters at params['lora'] (moved to their collection),
  with `dropout` on the adapters' inputs when the apply is given a `dropout` rng (training).
  Inference with adapters applied on the fly (`llava_jax.load(..., merge=False)`) uses it too."""

  def __init__(self, model: nn.Module, dropout: float = 0.0):
    self.base = model
    self.dropout = dropout
    adapter_dropout(dropout)   # checks the rate now, not at the first step

  def apply(self, variables, *args, **kwargs):
    params = dict(variables["params"])
    adapters = params.pop(LORA)
    with adapter_dropout(self.dropout):
      return self.base.apply({"params": params, LORA: adapters}, *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.base, name)
