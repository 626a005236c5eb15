"""Our checkpoints -> a llava-hf directory (`to-hf`).

The result loads with `LlavaForConditionalGeneration.from_pretrained` and
`AutoProcessor.from_pretrained`. The prompt settings the model was trained with go along as
`prompt.json` and as `chat_template.jinja` (read by the tokenizer and the processor), so
`apply_chat_template` builds our prompts. Tensors stream out of `hf.params_to_hf` one at a time into
safetensors shards of at most `max_shard_bytes`.
"""

import json

import numpy as np

from llava_jax import errors
from llava_jax.checkpoint import model_dir
from llava_jax.checkpoint import sources
from llava_jax.convert import hf
from llava_jax.convert import hf_config
from llava_jax.convert import tensor_files
from llava_jax.data import chat_template
from llava_jax.infer import prompting

_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

# `hf.params_to_hf` yields transformers' in-memory names; files use the names
# `save_pretrained` writes (reverse of transformers' llava checkpoint-conversion mapping), so the
# export of an imported checkpoint is the same file, key for key.
_ON_DISK_PREFIXES = (("model.language_model.", "language_model.model."),
                     ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector."))


def on_disk_name(name: str) -> str:
  for prefix, replacement in _ON_DISK_PREFIXES:
    if name.startswith(prefix):
      return replacement + name[len(prefix):]
  return name


def processor_config(model_cfg, preprocessor: dict) -> dict:
  """LlavaProcessor settings (transformers 5 nests the image processor in this file)."""
  return {
      "processor_class": "LlavaProcessor",
      "image_processor": dict(preprocessor),
      "image_token": "<image>",
      "patch_size": model_cfg.vision.patch_size,
      # CLIP always prepends CLS; "default" drops it again, "full" keeps it.
      "num_additional_image_tokens": 1,
      "vision_feature_select_strategy": hf_config.HF_FEATURE_SELECT[model_cfg.vision.feature_select],
  }


def _token_ids(tokenizer_dir) -> dict:
  """bos/eos/pad ids for the text config (generation and padding read them from there)."""
  if tokenizer_dir is None:
    return {}
  import transformers  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id")
         for name in ("bos", "eos", "pad")}
  return {k: v for k, v in ids.items() if v is not None}


def _write_chat_template(staging, settings: prompting.PromptSettings) -> None:
  """prompt.json + chat_template.jinja; a template the source tokenizer carried is replaced."""
  prompting.write_settings(staging, settings)
  (staging / "chat_template.jinja").write_text(chat_template.jinja(
      settings.template, settings.image_placement, settings.system_prompt))
  (staging / "chat_template.json").unlink(missing_ok=True)
  tokenizer_config = staging / "tokenizer_config.json"
  if tokenizer_config.is_file():
    config = json.loads(tokenizer_config.read_text())
    if config.pop("chat_template", None) is not None:
      tokenizer_config.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def export_llava_hf(ckpt: str, out: str, *, overwrite: bool = False, dtype: str | None = None,
                    max_shard_bytes: int = 5 * 10**9, adapter: str | None = None) -> list[str]:
  """Writes the checkpoint at `ckpt` (model dir or training workdir) as llava-hf to `out`.

  `dtype`: cast per tensor (default: as stored). `adapter`: LoRA adapters merged in first
  (convert/adapters.py; a LoRA workdir as `ckpt` is always merged). Returns the weight files.
  """
  if adapter is not None:
    from llava_jax.convert import adapters  # pylint: disable=g-import-not-at-top
    checkpoint = adapters.merged_checkpoint(ckpt, adapter)
  else:
    checkpoint = sources.read_checkpoint(ckpt)
  llava_cfg = hf_config.to_hf(checkpoint.model_cfg, **_token_ids(checkpoint.tokenizer_dir))
  with model_dir.staged_output(out, overwrite) as staging:
    writer = tensor_files.ShardedSafetensorsWriter(staging, max_shard_bytes)
    stored_dtype = None
    for key, tensor in hf.params_to_hf(checkpoint.params, checkpoint.model_cfg):
      tensor = np.asarray(tensor)
      stored_dtype = stored_dtype or tensor.dtype.name
      writer.add(on_disk_name(key), tensor if dtype is None else tensor.astype(dtype, copy=False))
    files = writer.close()
    llava_cfg.dtype = _DTYPE_NAMES.get(dtype or stored_dtype, "float32")
    llava_cfg.save_pretrained(staging)
    if checkpoint.tokenizer_dir is not None:
      model_dir.copy_tokenizer(checkpoint.tokenizer_dir, staging)
    _write_chat_template(staging, checkpoint.prompt or prompting.default_settings())
    # Our aspect key is unknown to CLIPImageProcessor.
    preprocessor = {k: v for k, v in checkpoint.preprocessor.items() if k != model_dir.IMAGE_ASPECT}
    model_dir.write_preprocessor(staging, preprocessor)
    config = processor_config(checkpoint.model_cfg, preprocessor)
    (staging / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")
  return files


class NotLoraError(errors.UserError, ValueError):
  """to-peft asked of a checkpoint that holds no adapters."""


def export_peft(ckpt: str, out: str, *, overwrite: bool = False) -> list[str]:
  """Writes the adapters (and projector) of a LoRA workdir `ckpt` as a PEFT directory `out`."""
  from llava_jax.convert import adapters  # pylint: disable=g-import-not-at-top
  from llava_jax.convert import peft  # pylint: disable=g-import-not-at-top
  if not adapters.is_lora_workdir(ckpt):
    raise NotLoraError(f"{ckpt}: not a LoRA training workdir (configs/finetune_lora.py); it has "
                       "no adapters to export (to-hf exports a full model)")
  model_cfg = sources.read_model_config(ckpt)
  adapter = adapters.read_adapter(ckpt, model_cfg)
  config, tensors = peft.to_peft(adapter.adapters, adapter.projector, model_cfg,
                                 dropout=adapter.dropout)
  config["base_model_name_or_path"] = adapter.base or None
  with model_dir.staged_output(out, overwrite) as staging:
    return peft.write_peft(staging, config, tensors)
