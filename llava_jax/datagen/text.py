"""FLAN-style text instruction data (CLI); the templates and conversion live in `flan.py`.

  python -m llava_jax.datagen.text --task=nli --input=snli.jsonl --out=nli.json
  python -m llava_jax.datagen.text --task=nli --input=tfds:snli --split=train --out=nli.json

Output: text-only LLaVA records (no "image" field) that mix into stage-2 data.
"""

import collections
import itertools
import json
import os

from absl import app
from absl import flags

from llava_jax.datagen import flan
from llava_jax.datagen import journal

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_enum("task", None, flan.TASKS, "Which task's templates to apply.")
  flags.DEFINE_string("input", None, "JSONL file, or tfds:NAME for a local TFDS dataset.")
  flags.DEFINE_string("out", None, "Output LLaVA JSON (or .jsonl) file.")
  flags.DEFINE_string("split", "train", "TFDS split.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: TFDS's).")
  flags.DEFINE_integer("seed", 0, "Seeds the per-example template choice.")
  flags.DEFINE_integer("limit", None, "Convert only the first N examples.")
  flags.DEFINE_string("source_lang", "en", "Translation: source language code.")
  flags.DEFINE_string("target_lang", "de", "Translation: target language code.")


def main(argv):
  del argv
  for name in ("task", "input", "out"):
    if FLAGS[name].value is None:
      raise app.UsageError(f"--{name} is required")
  examples = flan.read_examples(FLAGS.input, FLAGS.split, FLAGS.tfds_data_dir)
  if FLAGS.limit is not None:
    examples = itertools.islice(examples, FLAGS.limit)
  skipped = collections.Counter()
  records = list(flan.to_records(
      FLAGS.task, examples, seed=FLAGS.seed, where=FLAGS.input,
      source_lang=FLAGS.source_lang, target_lang=FLAGS.target_lang, skipped=skipped))
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  if FLAGS.out.endswith(".jsonl"):
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  else:
    journal.write_json_atomic(FLAGS.out, records)
  print(json.dumps({"task": FLAGS.task, "written": len(records), "skipped": dict(skipped)}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
