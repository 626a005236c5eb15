"""Our model ConfigDict <-> transformers' LlavaConfig (CLIPVisionConfig + LlamaConfig).

  from_hf(llava_config) -> model ConfigDict (the structure of `llava_jax.config.schema.model_config`)
  to_hf(model_cfg, **text_config_overrides) -> transformers.LlavaConfig
  vision_from_hf(clip_vision_config), llm_from_hf(llama_config) -> the sub-ConfigDicts

llava-hf's projector is always two linear layers with an activation between them, so only
`mlp2x_gelu` exports; a `linear` projector (LLaVA v1) has no llava-hf form.
"""

import ml_collections
import transformers

from llava_jax.config import schema

# Our model.vision.feature_select -> llava-hf's vision_feature_select_strategy (the one mapping).
HF_FEATURE_SELECT = {"patch": "default", "cls_patch": "full"}


def _as_dict(config) -> dict:
  return dict(config) if isinstance(config, dict) else config.to_dict()


def _get(config: dict, key, default=None):
  value = config.get(key, default)
  return default if value is None else value


def _rope(llama: dict) -> tuple[float, float]:
  """(theta, linear scaling factor) from transformers 5 `rope_parameters` or 4.x fields."""
  params = _get(llama, "rope_parameters") or _get(llama, "rope_scaling") or {}
  theta = _get(params, "rope_theta", _get(llama, "rope_theta", 10000.0))
  rope_type = _get(params, "rope_type", _get(params, "type", "default"))
  if rope_type not in ("default", "linear"):
    raise ValueError(f"text_config.rope_parameters: rope_type {rope_type!r} is not supported "
                     "(only 'default' and 'linear')")
  factor = float(_get(params, "factor", 1.0)) if rope_type == "linear" else 1.0
  return float(theta), factor


def vision_from_hf(clip) -> ml_collections.ConfigDict:
  clip = _as_dict(clip)
  if _get(clip, "hidden_act") != "quick_gelu":
    raise ValueError(f"vision_config.hidden_act={_get(clip, 'hidden_act')!r}: only quick_gelu "
                     "(OpenAI CLIP) is supported")
  return schema.vision_config(
      image_size=_get(clip, "image_size"), patch_size=_get(clip, "patch_size"),
      width=_get(clip, "hidden_size"), layers=_get(clip, "num_hidden_layers"),
      heads=_get(clip, "num_attention_heads"), mlp_dim=_get(clip, "intermediate_size"),
      layer_norm_eps=float(_get(clip, "layer_norm_eps", 1e-5)))


def llm_from_hf(llama) -> ml_collections.ConfigDict:
  llama = _as_dict(llama)
  heads = _get(llama, "num_attention_heads")
  dim = _get(llama, "hidden_size")
  kv_heads = _get(llama, "num_key_value_heads") or heads
  head_dim = _get(llama, "head_dim", dim // heads)
  for key in ("attention_bias", "mlp_bias"):
    if _get(llama, key):
      raise ValueError(f"text_config.{key}=True is not supported (LLaMA has no biases)")
  theta, factor = _rope(llama)
  return schema.llm_config(
      vocab_size=_get(llama, "vocab_size"), dim=dim, layers=_get(llama, "num_hidden_layers"),
      heads=heads, kv_heads=kv_heads, head_dim=head_dim,
      mlp_dim=_get(llama, "intermediate_size"), max_len=_get(llama, "max_position_embeddings", 2048),
      norm_eps=float(_get(llama, "rms_norm_eps", 1e-6)), rope_theta=theta,
      rope_scaling_factor=factor, tie_embeddings=bool(_get(llama, "tie_word_embeddings", False)))


def from_hf(llava) -> ml_collections.ConfigDict:
  """A model ConfigDict for a transformers LlavaConfig (or its dict)."""
  llava = _as_dict(llava)
  layer = _get(llava, "vision_feature_layer")
  if not isinstance(layer, int):
    raise ValueError(f"vision_feature_layer={layer!r}: only a single layer is supported")
  strategy = _get(llava, "vision_feature_select_strategy")
  select = {v: k for k, v in HF_FEATURE_SELECT.items()}.get(strategy)
  if select is None:
    raise ValueError(f"vision_feature_select_strategy={strategy!r} (expected default|full)")
  act = _get(llava, "projector_hidden_act")
  if act != "gelu":
    raise ValueError(f"projector_hidden_act={act!r}: only 'gelu' (mlp2x_gelu) is supported")
  if not _get(llava, "multimodal_projector_bias", True):
    raise ValueError("multimodal_projector_bias=False is not supported")
  vision = vision_from_hf(_get(llava, "vision_config"))
  vision.feature_layer = layer
  vision.feature_select = select
  # Every architecture field comes from the checkpoint; only run settings (dtype, remat, ...)
  # take the schema's defaults.
  return schema.model_config(
      name="hf", vision=vision, llm=llm_from_hf(_get(llava, "text_config")),
      projector="mlp2x_gelu",
      image_token_id=_get(llava, "image_token_index", _get(llava, "image_token_id")))


def to_hf(model_cfg: ml_collections.ConfigDict, **text_overrides) -> transformers.LlavaConfig:
  """The llava-hf config of our model; `text_overrides` set LlamaConfig fields (token ids)."""
  if model_cfg.projector != "mlp2x_gelu":
    raise ValueError(f"model.projector={model_cfg.projector!r}: llava-hf only has the "
                     "mlp2x_gelu projector")
  v, t = model_cfg.vision, model_cfg.llm
  vision = transformers.CLIPVisionConfig(
      hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.layers,
      num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
      layer_norm_eps=v.layer_norm_eps, hidden_act="quick_gelu", projection_dim=768)
  rope = {"rope_type": "default", "rope_theta": t.rope_theta}
  if t.rope_scaling_factor != 1.0:
    rope = {"rope_type": "linear", "factor": t.rope_scaling_factor, "rope_theta": t.rope_theta}
  text = dict(
      vocab_size=t.vocab_size, hidden_size=t.dim, intermediate_size=t.mlp_dim,
      num_hidden_layers=t.layers, num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
      head_dim=t.head_dim, max_position_embeddings=t.max_len, rms_norm_eps=t.norm_eps,
      rope_parameters=rope, tie_word_embeddings=t.tie_embeddings, hidden_act="silu")
  text.update(text_overrides)
  return transformers.LlavaConfig(
      vision_config=vision, text_config=transformers.LlamaConfig(**text),
      image_token_index=model_cfg.image_token_id, projector_hidden_act="gelu",
      vision_feature_layer=v.feature_layer,
      vision_feature_select_strategy=HF_FEATURE_SELECT[v.feature_select],
      image_seq_length=schema.num_image_tokens(model_cfg),
      tie_word_embeddings=t.tie_embeddings)
