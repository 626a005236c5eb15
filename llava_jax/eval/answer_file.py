"""Questions in LLaVA's question-file format and their answers in LLaVA's answer-file format.

Question file (`playground/data/eval/<bench>/*.jsonl`): one JSON object a line with
`question_id`, `image` (relative to the benchmark's image folder), `text` (the question as the
model sees it, with the benchmark's instruction suffix) and optional `category`.

Answer file: one line per answer, as LLaVA's `model_vqa*` scripts write it
(`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`, plus `round_id` for
MMBench's rounds), and an `id` key. The file is a `datagen.journal.Journal`: every answer is
fsync'ed when written, so a killed run resumes where it stopped.
"""

import dataclasses
import json
import os
import time
from typing import Callable
import uuid

import tqdm

from llava_jax.datagen import journal as journal_lib
from llava_jax.eval import answering


@dataclasses.dataclass(frozen=True)
class Question:
  id: str                        # unique in the run (MMBench: "<index>/<round>")
  question_id: object            # as in the question file (int or str)
  text: str                      # the prompt text: question + the benchmark's instruction
  image: str | None              # absolute path, or None
  extra: dict = dataclasses.field(default_factory=dict)   # copied into the answer record


def read_jsonl(path: str) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
  return rows


def read_questions(path: str, image_dir: str) -> list[Question]:
  """LLaVA's question file → Questions (errors name the file, line and field)."""
  questions, seen = [], set()
  for line_no, row in enumerate(read_jsonl(path), 1):
    for field in ("question_id", "text"):
      if field not in row:
        raise ValueError(f"{path}: question {line_no}: missing field {field!r}")
    image = row.get("image")
    extra = {"category": row["category"]} if "category" in row else {}
    # TextVQA's file reuses the image id as question_id: keep journal ids unique.
    qid = str(row["question_id"]) if str(row["question_id"]) not in seen else (
        f"{row['question_id']}#{line_no}")
    seen.add(qid)
    questions.append(Question(id=qid, question_id=row["question_id"],
                              text=row["text"], image=os.path.join(image_dir, image)
                              if image else None, extra=extra))
  return questions


def answer(questions: list[Question], answer_fn: answering.AnswerFn, answers_path: str, *,
           batch_size: int = 8, model_id: str = "llava_jax", desc: str = "answering",
           progress: bool = True) -> dict[str, dict]:
  """Answers every question not yet in `answers_path`; returns id → answer record.

  The bar shows answered/total with rate and ETA (questions resumed from the file count as
  done and are not timed).
  """
  ids = [q.id for q in questions]
  if len(set(ids)) != len(ids):
    raise ValueError(f"{desc}: question ids repeat")
  journal = journal_lib.Journal(answers_path)
  todo = [q for q in questions if q.id not in journal.ids]
  started = time.monotonic()
  try:
    with tqdm.tqdm(total=len(questions), initial=len(questions) - len(todo), desc=desc,
                   unit="q", disable=not progress, smoothing=0.1) as bar:
      for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        texts = answer_fn([q.text for q in batch], [q.image for q in batch])
        if len(texts) != len(batch):
          raise ValueError(f"answer_fn returned {len(texts)} answers for {len(batch)} prompts")
        for q, text in zip(batch, texts):
          journal.append({"id": q.id, "question_id": q.question_id, **q.extra, "prompt": q.text,
                          "text": text.strip(), "answer_id": uuid.uuid4().hex,
                          "model_id": model_id, "metadata": {}})
        bar.update(len(batch))
  finally:
    journal.close()
  if todo and progress:
    print(f"{desc}: {len(todo)} answered in {time.monotonic() - started:.0f} s, "
          f"{len(questions) - len(todo)} resumed from {answers_path}")
  return {r["id"]: r for r in journal.records if r["id"] in set(ids)}


@dataclasses.dataclass
class Runner:
  """What every benchmark needs to get answers: a model, where to journal, how to batch."""
  answer_for: Callable[[int], answering.AnswerFn]   # max_new_tokens -> greedy AnswerFn
  out_dir: str
  batch_size: int = 8
  progress: bool = True
  model_id: str = "llava_jax"

  def answers(self, bench: str, questions: list[Question],
              max_new_tokens: int) -> dict[str, dict]:
    return answer(questions, self.answer_for(max_new_tokens),
                  os.path.join(self.out_dir, bench, "answers.jsonl"),
                  batch_size=self.batch_size, model_id=self.model_id, desc=bench,
                  progress=self.progress)

  def path(self, bench: str, name: str) -> str:
    os.makedirs(os.path.join(self.out_dir, bench), exist_ok=True)
    return os.path.join(self.out_dir, bench, name)


def replay(questions: list[Question], records: dict[str, dict]) -> answering.AnswerFn:
  """An AnswerFn that returns journaled answers, for evaluators that take an AnswerFn."""
  by_prompt = {(q.text, q.image): records[q.id]["text"] for q in questions}
  return lambda prompts, images: [by_prompt[(p, i)] for p, i in zip(prompts, images)]


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  journal_lib.write_json_atomic(path, obj)


def read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path}: not JSON ({e})") from None
