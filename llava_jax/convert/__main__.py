"""Hugging Face interchange CLI.

  python -m llava_jax.convert from-hf --hf=LLAVA_HF_DIR --out=MODEL_DIR
  python -m llava_jax.convert from-hf --vision=CLIP_DIR --llm=LLAMA_DIR \
      [--projector=mm_projector.bin] --out=MODEL_DIR
  python -m llava_jax.convert to-hf --ckpt=MODEL_DIR_OR_WORKDIR --out=LLAVA_HF_DIR

Outputs appear atomically (built in a hidden sibling directory, then renamed) and an existing
--out is only replaced with --overwrite.
"""

from absl import app
from absl import flags
from absl import logging

from llava_jax.convert import importer
from llava_jax.convert import exporter
from llava_jax.convert import tensor_files

_OUT = flags.DEFINE_string("out", None, "Destination (must not exist without --overwrite).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out once complete.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Cast every tensor to this dtype; default keeps the stored dtypes.")
# from-hf
_HF = flags.DEFINE_string("hf", None, "llava-hf directory (LlavaForConditionalGeneration).")
_VISION = flags.DEFINE_string("vision", None, "CLIP checkpoint dir (CLIPVisionModel / CLIPModel).")
_LLM = flags.DEFINE_string("llm", None, "LLaMA/Vicuna checkpoint dir (LlamaForCausalLM).")
_PROJECTOR = flags.DEFINE_string("projector", None, "LLaVA stage-1 mm_projector.bin (optional).")
_PROJECTOR_TYPE = flags.DEFINE_string(
    "projector_type", "mlp2x_gelu", "Projector to initialise when --projector is absent.")
_FEATURE_LAYER = flags.DEFINE_integer("feature_layer", -2, "CLIP layer LLaVA reads (components).")
_FEATURE_SELECT = flags.DEFINE_enum("feature_select", "patch", ["patch", "cls_patch"],
                                    "Drop (patch) or keep (cls_patch) CLS (components).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of a freshly initialised projector.")
# to-hf
_CKPT = flags.DEFINE_string("ckpt", None, "Model directory or training workdir.")
_MAX_SHARD_SIZE = flags.DEFINE_string("max_shard_size", "5GB", "Largest safetensors shard.")

COMMANDS = ("from-hf", "to-hf")


def _from_hf():
  if _HF.value and (_VISION.value or _LLM.value or _PROJECTOR.value):
    raise app.UsageError("from-hf: give either --hf or --vision/--llm[/--projector], not both")
  if _HF.value:
    model_cfg = importer.import_llava_hf(_HF.value, _OUT.value, overwrite=_OVERWRITE.value,
                                         dtype=_DTYPE.value)
  elif _VISION.value and _LLM.value:
    model_cfg = importer.import_components(
        _VISION.value, _LLM.value, _OUT.value, projector=_PROJECTOR.value,
        projector_type=_PROJECTOR_TYPE.value, feature_layer=_FEATURE_LAYER.value,
        feature_select=_FEATURE_SELECT.value, overwrite=_OVERWRITE.value, dtype=_DTYPE.value,
        seed=_SEED.value)
  else:
    raise app.UsageError("from-hf needs --hf, or both --vision and --llm")
  logging.info("wrote model directory %s (projector %s, vocab %d)", _OUT.value,
               model_cfg.projector, model_cfg.llm.vocab_size)


def _to_hf():
  if not _CKPT.value:
    raise app.UsageError("to-hf needs --ckpt")
  files = exporter.export_llava_hf(_CKPT.value, _OUT.value, overwrite=_OVERWRITE.value,
                                   dtype=_DTYPE.value,
                                   max_shard_bytes=tensor_files.parse_size(_MAX_SHARD_SIZE.value))
  logging.info("wrote llava-hf directory %s (%s)", _OUT.value, ", ".join(files))


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(
        f"usage: python -m llava_jax.convert {{{'|'.join(COMMANDS)}}} --out=DIR ...")
  if not _OUT.value:
    raise app.UsageError("--out is required")
  {"from-hf": _from_hf, "to-hf": _to_hf}[argv[1]]()


if __name__ == "__main__":
  app.run(main)
