"""FLAN-style held-out evaluation: train on some of `datagen.text`'s task types, test on another.

Input: a folder with one JSONL file per task type, named <task>.jsonl for the tasks of
`datagen.flan.TASKS` (sentiment, nli, qa, translation; the fields `datagen.flan` reads), like
data/datagen_samples/text/. `split(inputs_dir, heldout)` renders every task with its FLAN
templates and returns (training records of the other tasks, evaluation examples of the held-out
one); the held-out task's records never enter training. Scored like Natural Instructions:
ROUGE-L and exact match, per task and overall.
"""

import os

from llava_jax.datagen import flan


def split(inputs_dir: str, heldout: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
  if heldout not in flan.TASKS:
    raise ValueError(f"unknown held-out task {heldout!r}; choose from {flan.TASKS}")
  train, examples = [], []
  found = [t for t in flan.TASKS if os.path.exists(os.path.join(inputs_dir, f"{t}.jsonl"))]
  if heldout not in found or len(found) < 2:
    raise ValueError(f"{inputs_dir}: needs {heldout}.jsonl and at least one other of "
                     f"{[f'{t}.jsonl' for t in flan.TASKS]}")
  for task in found:
    path = os.path.join(inputs_dir, f"{task}.jsonl")
    records = list(flan.to_records(task, flan.read_examples(path), seed=seed, where=path))
    if task != heldout:
      train += records
      continue
    examples += [{"id": r["id"], "task": task, "categories": [task],
                  "prompt": r["conversations"][0]["value"],
                  "references": [r["conversations"][1]["value"]]} for r in records]
  return train, examples
