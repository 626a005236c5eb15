"""Hugging Face interchange CLI.

  python -m llava_jax.convert from-hf --hf=LLAVA_HF_DIR --out=MODEL_DIR
  python -m llava_jax.convert from-hf --vision=CLIP_DIR --llm=LLAMA_DIR \
      [--projector=mm_projector.bin] --out=MODEL_DIR
  python -m llava_jax.convert to-hf --ckpt=MODEL_DIR_OR_WORKDIR --out=LLAVA_HF_DIR
  python -m llava_jax.convert to-hf --merge_lora --ckpt=LORA_WORKDIR --out=LLAVA_HF_DIR
  python -m llava_jax.convert to-hf --merge_lora --ckpt=BASE --adapter=PEFT_DIR --out=LLAVA_HF_DIR
  python -m llava_jax.convert to-peft --ckpt=LORA_WORKDIR --out=PEFT_DIR

Outputs appear atomically (built in a hidden sibling directory, then renamed) and an existing
--out is only replaced with --overwrite.
"""

from absl import app
from absl import flags
from absl import logging

from llava_jax import errors
from llava_jax import quiet

quiet.install()   # before the converters import transformers

from llava_jax.convert import exporter  # noqa: E402
from llava_jax.convert import importer  # noqa: E402
from llava_jax.convert import tensor_files  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_string("out", None, "Destination (must not exist without --overwrite).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out once complete.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                    "Cast every tensor to this dtype; default keeps the stored dtypes.")
  # from-hf
  flags.DEFINE_string("hf", None, "llava-hf directory (LlavaForConditionalGeneration).")
  flags.DEFINE_string("vision", None, "CLIP checkpoint dir (CLIPVisionModel / CLIPModel).")
  flags.DEFINE_string("llm", None, "LLaMA/Vicuna checkpoint dir (LlamaForCausalLM).")
  flags.DEFINE_string("projector", None, "LLaVA stage-1 mm_projector.bin (optional).")
  flags.DEFINE_string(
      "projector_type", "mlp2x_gelu", "Projector to initialise when --projector is absent.")
  flags.DEFINE_integer("feature_layer", -2, "CLIP layer LLaVA reads (components).")
  flags.DEFINE_enum("feature_select", "patch", ["patch", "cls_patch"],
                    "Drop (patch) or keep (cls_patch) CLS (components).")
  flags.DEFINE_integer("seed", 0, "Seed of a freshly initialised projector.")
  # to-hf
  flags.DEFINE_string("ckpt", None, "Model directory or training workdir.")
  flags.DEFINE_string("max_shard_size", "5GB", "Largest safetensors shard.")
  flags.DEFINE_bool("merge_lora", False, "to-hf: merge LoRA adapters into the base weights "
                    "(needed for a LoRA workdir or --adapter).")
  flags.DEFINE_string("adapter", None, "to-hf: PEFT / LLaVA LoRA adapter dir or LoRA workdir to "
                      "merge into --ckpt (with --merge_lora).")


COMMANDS = ("from-hf", "to-hf", "to-peft")


def _from_hf():
  if FLAGS.hf and (FLAGS.vision or FLAGS.llm or FLAGS.projector):
    raise app.UsageError("from-hf: give either --hf or --vision/--llm[/--projector], not both")
  if FLAGS.hf:
    model_cfg = importer.import_llava_hf(FLAGS.hf, FLAGS.out, overwrite=FLAGS.overwrite,
                                         dtype=FLAGS.dtype)
  elif FLAGS.vision and FLAGS.llm:
    model_cfg = importer.import_components(
        FLAGS.vision, FLAGS.llm, FLAGS.out, projector=FLAGS.projector,
        projector_type=FLAGS.projector_type, feature_layer=FLAGS.feature_layer,
        feature_select=FLAGS.feature_select, overwrite=FLAGS.overwrite, dtype=FLAGS.dtype,
        seed=FLAGS.seed)
  else:
    raise app.UsageError("from-hf needs --hf, or both --vision and --llm")
  logging.info("wrote model directory %s (projector %s, vocab %d)", FLAGS.out,
               model_cfg.projector, model_cfg.llm.vocab_size)


def _to_hf():
  if not FLAGS.ckpt:
    raise app.UsageError("to-hf needs --ckpt")
  from llava_jax.convert import adapters  # pylint: disable=g-import-not-at-top
  has_adapters = FLAGS.adapter is not None or adapters.has_adapters(FLAGS.ckpt)
  if has_adapters and not FLAGS.merge_lora:
    raise app.UsageError(f"to-hf: {FLAGS.adapter or FLAGS.ckpt} holds LoRA adapters; pass "
                         "--merge_lora to merge them (or use to-peft to keep them apart)")
  if FLAGS.merge_lora and not has_adapters:
    raise app.UsageError(f"to-hf --merge_lora: {FLAGS.ckpt} has no LoRA adapters (a LoRA "
                         "training workdir, or --adapter=DIR) to merge")
  files = exporter.export_llava_hf(FLAGS.ckpt, FLAGS.out, overwrite=FLAGS.overwrite,
                                   dtype=FLAGS.dtype,
                                   max_shard_bytes=tensor_files.parse_size(FLAGS.max_shard_size),
                                   adapter=FLAGS.adapter)
  logging.info("wrote llava-hf directory %s (%s)", FLAGS.out, ", ".join(files))


def _to_peft():
  if not FLAGS.ckpt:
    raise app.UsageError("to-peft needs --ckpt (a LoRA training workdir)")
  files = exporter.export_peft(FLAGS.ckpt, FLAGS.out, overwrite=FLAGS.overwrite)
  logging.info("wrote PEFT adapter directory %s (%s)", FLAGS.out, ", ".join(files))


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(
        f"usage: python -m llava_jax.convert {{{'|'.join(COMMANDS)}}} --out=DIR ...")
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  {"from-hf": _from_hf, "to-hf": _to_hf, "to-peft": _to_peft}[argv[1]]()


if __name__ == "__main__":
  define_flags()
  app.run(errors.one_line(main))
