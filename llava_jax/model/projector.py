"""Vision → language projector: `linear` (LLaVA) or `mlp{N}x_gelu` (LLaVA-1.5: N=2).

Einsum letters: B batch, N image tokens, Dv vision width, D decoder width.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.model import layers


def num_linear_layers(kind: str) -> int:
  """1 for "linear", N for "mlpNx_gelu"."""
  if kind == "linear":
    return 1
  match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
  if not match or int(match.group(1)) < 1:
    raise ValueError(f"model.projector: unknown kind {kind!r} (expected 'linear' or "
                     "'mlpNx_gelu')")
  return int(match.group(1))


def kind_of(num_linear: int) -> str:
  """The projector kind with `num_linear` linear layers (inverse of `num_linear_layers`)."""
  return "linear" if num_linear == 1 else f"mlp{num_linear}x_gelu"


def logical_axes(n: int) -> list[str]:
  """Logical names of the n+1 feature dims the n linear layers connect.

  Named backwards from the output ('embed'), alternating with 'mlp', so that no kernel maps
  two dims to the same mesh axis (vision_embed and embed both shard over 'fsdp').
  """
  names = ["embed" if (n - i) % 2 == 0 else "mlp" for i in range(n + 1)]
  names[0] = "vision_embed" if n % 2 == 0 else "vision_mlp"
  return names


class Projector(nn.Module):
  """features float[B, N, Dv] -> float[B, N, D]; GELU (exact erf form, as HF's "gelu") between."""
  kind: str
  out_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxNxDv):
    n = num_linear_layers(self.kind)
    axes = logical_axes(n)
    x = x_BxNxDv
    for i in range(n):
      if i:
        x = jax.nn.gelu(x, approximate=False)
      x = layers.dense(self.out_dim, (axes[i], axes[i + 1]), dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"linear_{i}")(x)
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
