"""CLIP ViT vision tower, laid out as OpenAI CLIP (transformers' `CLIPVisionModel`).

Einsum letters: B images, N patches (+1 with CLS), D width (Dv), H heads, Dh head width,
F mlp width, P patch size.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from llava_jax.model import layers


def image_tokens(image_size: int, patch_size: int, feature_select: str) -> int:
  """Tokens one image becomes: its patches, plus CLS when `feature_select` keeps it."""
  return (image_size // patch_size) ** 2 + (1 if feature_select == "cls_patch" else 0)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Built from the config schema (`llava_jax.config.schema.vision_config`), which holds the
  defaults; every field is given."""
  image_size: int
  patch_size: int
  width: int
  layers: int
  heads: int
  mlp_dim: int
  layer_norm_eps: float
  feature_layer: int       # index into HF hidden_states: 0 = embeddings after pre-norm.
  feature_select: str      # "patch" drops CLS, "cls_patch" keeps it.

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def layers_needed(self) -> int:
    """Encoder layers to run for `feature_layer` (hidden_states has layers + 1 entries)."""
    n = self.layers + 1
    if not -n <= self.feature_layer < n:
      raise ValueError(f"model.vision.feature_layer={self.feature_layer} out of range for "
                       f"{self.layers} layers")
    return self.feature_layer % n


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


class VisionAttention(nn.Module):
  """Bidirectional multi-head self-attention with biases (CLIP)."""
  cfg: VisionConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BxNxD):
    cfg = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    head_dim = cfg.width // cfg.heads
    qkv_axes = ("vision_embed", "vision_heads", "head_dim")
    q = layers.dense((cfg.heads, head_dim), qkv_axes, name="q", **kw)(x_BxNxD)
    k = layers.dense((cfg.heads, head_dim), qkv_axes, name="k", **kw)(x_BxNxD)
    v = layers.dense((cfg.heads, head_dim), qkv_axes, name="v", **kw)(x_BxNxD)
    o_BxNxHxDh = layers.dot_product_attention(q, k, v, None)
    return layers.dense(cfg.width, ("vision_heads", "head_dim", "vision_embed"),
                        n_in=2, name="o", **kw)(o_BxNxHxDh)


class VisionMlp(nn.Module):
  """fc2(quick_gelu(fc1(x)))."""
  cfg: VisionConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BxNxD):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h_BxNxF = layers.dense(self.cfg.mlp_dim, ("vision_embed", "vision_mlp"), name="fc1",
                           **kw)(x_BxNxD)
    h_BxNxF = nn.with_logical_constraint(quick_gelu(h_BxNxF), ("batch", "length", "act_mlp"))
    return layers.dense(self.cfg.width, ("vision_mlp", "vision_embed"), name="fc2", **kw)(h_BxNxF)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""
  cfg: VisionConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BxNxD, _):
    cfg, dt, pdt = self.cfg, self.dtype, self.param_dtype
    h = layers.layer_norm("vision_embed", cfg.layer_norm_eps, dt, pdt, name="norm1")(x_BxNxD)
    x_BxNxD = x_BxNxD + VisionAttention(cfg, dt, pdt, name="attn")(h)
    h = layers.layer_norm("vision_embed", cfg.layer_norm_eps, dt, pdt, name="norm2")(x_BxNxD)
    x_BxNxD = x_BxNxD + VisionMlp(cfg, dt, pdt, name="mlp")(h)
    return nn.with_logical_constraint(x_BxNxD, ("batch", "length", "act_embed")), None


class VisionTower(nn.Module):
  """pixels float32[B, H, W, 3] (CLIP-normalised) -> features [B, N, Dv] of `feature_layer`.

  N = num_patches, or num_patches + 1 with feature_select="cls_patch". Only the encoder layers
  up to the feature layer run; the later layers (and post_norm, which LLaVA never reads) still
  own parameters so that checkpoints convert one-to-one.
  """
  cfg: VisionConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: str = "none"

  def setup(self):
    cfg, pdt = self.cfg, self.param_dtype
    p = cfg.patch_size
    self.patch_embed = self.param(
        "patch_embed", layers.partitioned(layers.default_init, ("vision_patch",) * 3 +
                                          ("vision_embed",)), (p, p, 3, cfg.width), pdt)
    self.class_embed = self.param(
        "class_embed", layers.partitioned(layers.default_init, ("vision_embed",)),
        (cfg.width,), pdt)
    self.pos_embed = self.param(
        "pos_embed", layers.partitioned(layers.default_init, ("vision_pos", "vision_embed")),
        (cfg.num_patches + 1, cfg.width), pdt)
    self.pre_norm = layers.layer_norm("vision_embed", cfg.layer_norm_eps, self.dtype, pdt)
    self.post_norm = layers.layer_norm("vision_embed", cfg.layer_norm_eps, self.dtype, pdt)
    self.layers = self._stack(cfg.layers)

  def _stack(self, n: int, **module_kwargs):
    """The first `n` encoder blocks as one scanned (and optionally rematerialised) module."""
    block = EncoderBlock
    use_remat, policy = layers.remat_policy(self.remat)
    if use_remat:
      block = nn.remat(block, policy=policy, prevent_cse=False)
    return nn.scan(block, variable_axes={"params": 0, layers.LORA: 0},
                   split_rngs={"params": True, "dropout": True}, length=n,
                   metadata_params={nn.PARTITION_NAME: "layers"})(
                       self.cfg, self.dtype, self.param_dtype, **module_kwargs)

  def embed(self, pixels_BxHxWx3):
    """Patch + class + position embeddings, then pre-norm: HF hidden_states[0]."""
    p = self.cfg.patch_size
    x = jax.lax.conv_general_dilated(
        pixels_BxHxWx3.astype(self.dtype), self.patch_embed.astype(self.dtype),
        window_strides=(p, p), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b = x.shape[0]
    x_BxNxD = x.reshape(b, -1, self.cfg.width)
    cls_Bx1xD = jnp.broadcast_to(self.class_embed.astype(self.dtype), (b, 1, self.cfg.width))
    x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
    x_BxNxD = x_BxNxD + self.pos_embed.astype(self.dtype)[None]
    return self.pre_norm(x_BxNxD)

  def _run_first_layers(self, x_BxNxD, n: int):
    """Output of the first `n` encoder layers (n static), reading a slice of the stacked params."""
    if n == 0:
      return x_BxNxD
    # Parameters and adapters (LoRA, if any) of the first n layers.
    variables = {c: jax.tree_util.tree_map(lambda a: a[:n], nn.meta.unbox(v))
                 for c, v in self.layers.variables.items() if c in ("params", layers.LORA)}
    rngs = {"dropout": self.make_rng("dropout")} if self.has_rng("dropout") else None
    # A detached copy of the stack, applied functionally: Linen cannot shorten a bound scan.
    y, _ = self._stack(n, parent=None).apply(variables, x_BxNxD, None, rngs=rngs)
    return y

  def __call__(self, pixels_BxHxWx3):
    x_BxNxD = self.embed(pixels_BxHxWx3)
    n = self.cfg.layers_needed
    if self.is_initializing():
      y, _ = self.layers(x_BxNxD, None)
      self.post_norm(y)  # Creates post_norm's parameters; LLaVA never reads its output.
    if n == self.cfg.layers:
      y, _ = self.layers(x_BxNxD, None)
    else:
      y = self._run_first_layers(x_BxNxD, n)
    if self.cfg.feature_select == "patch":
      return y[:, 1:]
    if self.cfg.feature_select == "cls_patch":
      return y
    raise ValueError(f"model.vision.feature_select: unknown {self.cfg.feature_select!r} "
                     "(expected 'patch' or 'cls_patch')")
