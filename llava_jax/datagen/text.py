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

_TASK = flags.DEFINE_enum("task", None, flan.TASKS, "Which task's templates to apply.")
_INPUT = flags.DEFINE_string("input", None, "JSONL file, or tfds:NAME for a local TFDS dataset.")
_OUT = flags.DEFINE_string("out", None, "Output LLaVA JSON (or .jsonl) file.")
_SPLIT = flags.DEFINE_string("split", "train", "TFDS split.")
_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: TFDS's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the per-example template choice.")
_LIMIT = flags.DEFINE_integer("limit", None, "Convert only the first N examples.")
_SOURCE_LANG = flags.DEFINE_string("source_lang", "en", "Translation: source language code.")
_TARGET_LANG = flags.DEFINE_string("target_lang", "de", "Translation: target language code.")


def main(argv):
  del argv
  for flag in (_TASK, _INPUT, _OUT):
    if flag.value is None:
      raise app.UsageError(f"--{flag.name} is required")
  examples = flan.read_examples(_INPUT.value, _SPLIT.value, _DATA_DIR.value)
  if _LIMIT.value is not None:
    examples = itertools.islice(examples, _LIMIT.value)
  skipped = collections.Counter()
  records = list(flan.to_records(
      _TASK.value, examples, seed=_SEED.value, where=_INPUT.value,
      source_lang=_SOURCE_LANG.value, target_lang=_TARGET_LANG.value, skipped=skipped))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  if _OUT.value.endswith(".jsonl"):
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  else:
    journal.write_json_atomic(_OUT.value, records)
  print(json.dumps({"task": _TASK.value, "written": len(records), "skipped": dict(skipped)}))


if __name__ == "__main__":
  app.run(main)
