"""FLOP accounting for one LLaVA training step, and device peak FLOP/s.

MaxText's convention (`calculate_tflops_training_per_device`): a matmul with N weights costs
2·N FLOPs per token forward, and training multiplies that by 3 (forward, input gradient, weight
gradient), so 6·N·T for trained weights. Causal self-attention adds 4·T²·H·Dh/2 per row and layer
forward (QKᵀ and AV, half of the square), also ×3 in training. Padded tokens are counted: this is
the work the step does, not the work the data needed (the benchmark reports non-pad tokens apart).

LLaVA freezes parts of the model, so each part gets the factor its gradients actually need:
  trained                        ×3  forward + input gradient + weight gradient
  frozen, but gradients pass     ×2  forward + input gradient (stage 1's LLM: the projector's
                                     gradient flows back through every decoder layer)
  frozen, no gradient reaches it ×1  forward only (the vision tower, below the first trained part)
Attention has no weights, so wherever gradients pass it is ×3, else ×1.
"""

import dataclasses
import re
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one training step over the whole global batch, split by where they are spent."""
  llm_matmul: float         # decoder projections, MLP and LM head (logits)
  llm_attention: float      # causal QKᵀ and AV in the decoder
  projector: float          # vision → word-embedding projection
  vision: float             # CLIP tower (forward only while it is frozen)

  @property
  def total(self) -> float:
    return self.llm_matmul + self.llm_attention + self.projector + self.vision

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["total"] = self.total
    return d


def _factor(trained: bool, gradient_passes: bool) -> int:
  if trained:
    return 3
  return 2 if gradient_passes else 1


def vision_layers_run(vision_cfg) -> int:
  """Encoder layers needed to reach `feature_layer` (-2 = second-to-last: all but one)."""
  layer = vision_cfg.feature_layer
  return vision_cfg.layers + 1 + layer if layer < 0 else layer


def decoder_flops_per_token(llm_cfg) -> float:
  """Forward matmul FLOPs per token of the decoder, LM head included (no attention scores)."""
  d, h, kv, dh, f = llm_cfg.dim, llm_cfg.heads, llm_cfg.kv_heads, llm_cfg.head_dim, llm_cfg.mlp_dim
  per_layer = d * (h + 2 * kv) * dh + h * dh * d + 3 * d * f   # qkv, o, SwiGLU gate/up/down
  return 2.0 * (llm_cfg.layers * per_layer + d * llm_cfg.vocab_size)


def decoder_attention_flops_per_row(llm_cfg, seq_len: int) -> float:
  """Forward causal attention FLOPs of one row of `seq_len` tokens, all layers."""
  return llm_cfg.layers * 4.0 * seq_len**2 * llm_cfg.heads * llm_cfg.head_dim / 2


def vision_forward_flops_per_image(vision_cfg) -> tuple[float, float]:
  """(matmul, attention) forward FLOPs of the CLIP tower for one image."""
  dv, f, p = vision_cfg.width, vision_cfg.mlp_dim, vision_cfg.patch_size
  patches = (vision_cfg.image_size // p) ** 2
  tokens = patches + 1                                          # + CLS
  layers = vision_layers_run(vision_cfg)
  matmul = 2.0 * patches * p * p * 3 * dv                       # patch embedding
  matmul += layers * 2.0 * tokens * (4 * dv * dv + 2 * dv * f)  # qkv + o, fc1 + fc2
  attention = layers * 4.0 * tokens**2 * dv                     # bidirectional: the full square
  return matmul, attention


def projector_params(model_cfg) -> int:
  """Weights of the projector's matmuls ("linear" or "mlp{N}x_gelu")."""
  dv, d = model_cfg.vision.width, model_cfg.llm.dim
  match = re.fullmatch(r"mlp(\d+)x_gelu", model_cfg.projector)
  depth = int(match.group(1)) if match else 1
  return dv * d + (depth - 1) * d * d


def train_step_flops(model_cfg, *, batch_size: int, seq_len: int, images_per_row: int,
                     image_tokens: int, train_llm: bool, train_projector: bool,
                     train_vision: bool = False) -> StepFlops:
  """FLOPs of one training step on a [batch_size, seq_len] batch with `images_per_row` images.

  `image_tokens` is the number of tokens each image becomes (`num_image_tokens(model_cfg)`).
  The train_* flags say which parts receive weight updates.
  """
  tokens = batch_size * seq_len
  images = batch_size * images_per_row
  # A part's input gradient is needed iff something below it is trained.
  grad_into_llm = train_projector or train_vision
  grad_into_projector = train_vision
  llm_f = _factor(train_llm, grad_into_llm)
  proj_f = _factor(train_projector, grad_into_projector)
  vis_f = _factor(train_vision, False)
  llm_attention_f = 3 if (train_llm or grad_into_llm) else 1
  vis_attention_f = 3 if train_vision else 1

  vis_matmul, vis_attention = vision_forward_flops_per_image(model_cfg.vision)
  return StepFlops(
      llm_matmul=llm_f * tokens * decoder_flops_per_token(model_cfg.llm),
      llm_attention=llm_attention_f * batch_size
      * decoder_attention_flops_per_row(model_cfg.llm, seq_len),
      projector=proj_f * 2.0 * images * image_tokens * projector_params(model_cfg),
      vision=images * (vis_f * vis_matmul + vis_attention_f * vis_attention),
  )


# Dense bf16 peak FLOP/s per chip (vendor data sheets), matched against `device.device_kind`
# (lower-cased); first match wins, so the more specific names come first.
PEAK_BF16_FLOPS = (
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),    # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),         # v5p reports itself as "TPU v5"
    ("tpu v6 lite", 918e12),    # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("a100", 312e12),
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),           # SXM
    ("h200", 989e12),
)


def table_peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s for a device kind from the table, or None if it is not listed."""
  kind = device_kind.lower()
  for name, peak in PEAK_BF16_FLOPS:
    if name in kind:
      return peak
  return None


def measured_peak_flops(device=None, *, size: int = 1024, dtype=jnp.float32,
                        repeats: int = 10) -> float:
  """Best achieved FLOP/s of a square matmul: a peak estimate where the table has no entry (CPU)."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def peak_flops(device=None) -> tuple[float, str]:
  """(peak FLOP/s per device, where it came from: 'table' or 'measured')."""
  device = device or jax.devices()[0]
  peak = table_peak_flops(device.device_kind)
  if peak is not None:
    return peak, "table"
  return measured_peak_flops(device), "measured"
