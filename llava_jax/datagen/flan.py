"""FLAN-style text instruction data: labelled examples → text-only LLaVA records.

Each task has several templates (`prompts/text_templates.json`, written for this project);
one is chosen per example by an RNG seeded from (--seed, example index), so the wording varies
but a re-run gives the same file. Classification options are rendered as in FLAN:
`OPTIONS:\\n- a\\n- b`. Fields read per task (JSONL keys or TFDS features):
  sentiment    text|sentence|review, label (positive/negative or 1/0)
  nli          premise, hypothesis, label (entailment/neutral/contradiction or 0/1/2;
               -1, the SNLI "no gold label", is skipped)
  qa           context, question, answer | answers (list or SQuAD's {text: [...]})
  translation  source, target, or the language-code keys of --source_lang/--target_lang
"""

import collections
import functools
import json
import os
import random
from typing import Iterable, Iterator

from llava_jax.data import records as records_lib
from llava_jax.datagen import prompts

TASKS = ("sentiment", "nli", "qa", "translation")
NLI_OPTIONS = ("yes", "it is not possible to tell", "no")
_NLI_ANSWER = {"entailment": "yes", "neutral": "it is not possible to tell",
               "contradiction": "no", 0: "yes", 1: "it is not possible to tell", 2: "no"}
SENTIMENT_OPTIONS = ("negative", "positive")
_SENTIMENT_ANSWER = {"negative": "negative", "positive": "positive", "neg": "negative",
                     "pos": "positive", 0: "negative", 1: "positive"}
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
             "pt": "Portuguese", "ro": "Romanian", "cs": "Czech", "ru": "Russian",
             "fi": "Finnish", "tr": "Turkish", "zh": "Chinese", "ja": "Japanese", "hi": "Hindi",
             "et": "Estonian", "lv": "Latvian", "gu": "Gujarati", "kk": "Kazakh",
             "lt": "Lithuanian"}


class Skip(ValueError):
  """An example that cannot become a record (e.g. no gold label); counted by reason."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


@functools.cache
def templates(prompts_dir: str = prompts.PROMPTS_DIR) -> dict[str, list[dict]]:
  with open(os.path.join(prompts_dir, "text_templates.json"), encoding="utf-8") as f:
    return json.load(f)


def render_options(options: Iterable[str]) -> str:
  return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def task_fields(task: str, example: dict, source_lang: str = "en",
                target_lang: str = "de") -> dict:
  """The template fields of one example (raises `Skip` or a ValueError naming the field)."""
  if task == "sentiment":
    label = _label(example)
    if label not in _SENTIMENT_ANSWER:
      raise Skip("unknown_label")
    return {"text": _first(example, "text", "sentence", "review"),
            "options": render_options(SENTIMENT_OPTIONS), "answer": _SENTIMENT_ANSWER[label]}
  if task == "nli":
    label = _label(example)
    if label not in _NLI_ANSWER:
      raise Skip("no_gold_label")
    return {"premise": _first(example, "premise"), "hypothesis": _first(example, "hypothesis"),
            "options": render_options(NLI_OPTIONS), "answer": _NLI_ANSWER[label]}
  if task == "qa":
    answers = example.get("answer", example.get("answers"))
    if isinstance(answers, dict):
      answers = answers.get("text")
    if isinstance(answers, str):
      answers = [answers]
    answers = [a for a in answers or [] if isinstance(a, str) and a.strip()]
    if not answers:
      raise Skip("unanswerable")
    return {"context": _first(example, "context", "passage"),
            "question": _first(example, "question"), "answer": answers[0].strip()}
  if task == "translation":
    return {"source": _first(example, "source", source_lang),
            "target": _first(example, "target", target_lang),
            "source_lang": LANGUAGES.get(source_lang, source_lang),
            "target_lang": LANGUAGES.get(target_lang, target_lang)}
  raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def to_records(task: str, examples: Iterable[dict], *, seed: int = 0, where: str = "input",
               source_lang: str = "en", target_lang: str = "de",
               skipped: collections.Counter | None = None) -> Iterator[dict]:
  """Yields one text-only LLaVA record per usable example; counts the rest in `skipped`."""
  task_templates = templates()[task]
  for index, example in enumerate(examples):
    try:
      fields = task_fields(task, example, source_lang, target_lang)
    except Skip as e:
      if skipped is not None:
        skipped[e.reason] += 1
      continue
    except ValueError as e:
      raise ValueError(f"{where}: example {index}: {e}") from e
    template = random.Random(f"{seed}:{index}").choice(task_templates)
    record = {"id": f"{task}-{example.get('id', example.get('idx', index))}",
              "conversations": [{"from": "human", "value": template["input"].format(**fields)},
                                {"from": "gpt", "value": template["target"].format(**fields)}]}
    # E.g. a literal "<image>" in the text would make the training pipeline refuse the record.
    problems = records_lib.check_record(records_lib.Record(record["id"], record, where))
    if problems:
      if skipped is not None:
        skipped[f"invalid_record:{problems[0].kind}"] += 1
      continue
    yield record


def read_examples(source: str, split: str = "train", data_dir: str | None = None) -> Iterator[dict]:
  """Examples from a JSONL file, or `tfds:NAME` (a TFDS dataset prepared locally)."""
  if source.startswith("tfds:"):
    import tensorflow_datasets as tfds  # Heavy; only when asked for.
    data = tfds.data_source(source[len("tfds:"):], split=split, data_dir=data_dir,
                            download=False)
    for i in range(len(data)):
      yield _decode(data[i])
    return
  with open(source, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{source}:{line_no}: not valid JSON: {e}") from e


def _decode(value):
  """TFDS features → plain Python: bytes → str, numpy → lists/scalars, recursively."""
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "tolist"):
    return _decode(value.tolist())
  if isinstance(value, (list, tuple)):
    return [_decode(v) for v in value]
  return value


def _label(example: dict):
  label = example.get("label")
  return label.strip().lower() if isinstance(label, str) else label


def _first(example: dict, *keys: str) -> str:
  for key in keys:
    value = example.get(key)
    if isinstance(value, str) and value.strip():
      return " ".join(value.split())
  raise ValueError(f"missing or empty field {' | '.join(repr(k) for k in keys)}")
