"""LLaVA-Bench style evaluation: a judge model compares our answer with a reference answer.

Data (JSONL), one question per line:
  {"question_id", "image", "category": "conv"|"detail"|"complex", "question",
   "context": caption text or a list of captions (what the judge knows of the image),
   "reference": the reference answer}
For each question the judge (any OpenAI-compatible chat model) sees the context, the question,
the reference as Assistant 1 and our answer as Assistant 2, and must put the two 1-10 scores on
its first line. The reported relative score is LLaVA's: mean(ours) / mean(reference) x 100 per
category and overall. Reviews the judge did not score parsably are counted and left out.
"""

import collections
import dataclasses
import json
import os
import re

from llava_jax import openai_client as client_lib
from llava_jax.datagen import journal
from llava_jax.eval import answering
from llava_jax.eval import results as results_lib

CATEGORIES = ("conv", "detail", "complex")

JUDGE_SYSTEM = "You are a careful, impartial reviewer of answers written by AI assistants."

# Our wording; the output contract (two scores on the first line) is the one LLaVA's scripts parse.
JUDGE_RULE = (
    "Two AI assistants answered the user's question above about an image. You cannot see the "
    "image; the context above describes what it shows. Judge each answer for helpfulness, "
    "relevance, accuracy with respect to the image, and level of detail. Give each assistant an "
    "overall score from 1 to 10, where higher is better.\n"
    "On the first line, write only the two scores, for Assistant 1 and Assistant 2 in that "
    "order, separated by a space. From the next line on, explain your judgement. Do not let the "
    "order in which the answers are shown, or their length, influence you.")


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  image: str | None
  category: str
  question: str
  context: str
  reference: str


def load(path: str) -> list[Question]:
  questions = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      q = json.loads(line)
      where = f"{path}:{line_no}"
      for field in ("question_id", "category", "question", "reference"):
        if field not in q:
          raise ValueError(f"{where}: missing field {field!r}")
      if q["category"] not in CATEGORIES:
        raise ValueError(f"{where}: field 'category' is {q['category']!r}, not one of "
                         f"{CATEGORIES}")
      context = q.get("context", "")
      questions.append(Question(
          id=str(q["question_id"]), image=q.get("image"), category=q["category"],
          question=q["question"], reference=q["reference"],
          context="\n".join(context) if isinstance(context, list) else context))
  return questions


def judge_prompt(question: Question, answer: str) -> str:
  return (f"[Context]\n{question.context}\n\n[Question]\n{question.question}\n\n"
          f"[Assistant 1]\n{question.reference}\n\n[End of Assistant 1]\n\n"
          f"[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n[System]\n{JUDGE_RULE}\n\n")


_NUMBER = r"(10(?:\.0+)?|\d(?:\.\d+)?)"


def parse_scores(review: str) -> tuple[float, float] | None:
  """(reference score, our score) from a judge review, or None if it gives no clear pair.

  The first non-empty line must hold exactly two numbers ("8 7", "8, 7", "8.5 7",
  "Scores: 8 7"); failing that, "Assistant 1: 8" ... "Assistant 2: 7" anywhere.
  """
  lines = [line for line in review.strip().splitlines() if line.strip()]
  if lines:
    first = re.sub(r"assistant\s*[12]|/\s*10\b", " ", lines[0], flags=re.I)
    numbers = re.findall(r"(?<![\w.])" + _NUMBER + r"(?![\w.]*\d)", first)
    if len(numbers) == 2:
      return float(numbers[0]), float(numbers[1])
  by_assistant = {}
  for which, score in re.findall(r"Assistant\s*([12])\W{0,6}?(?:score\W*)?" + _NUMBER, review,
                                 flags=re.I):
    by_assistant.setdefault(which, float(score))
  if len(by_assistant) == 2:
    return by_assistant["1"], by_assistant["2"]
  return None


def evaluate(questions: list[Question], answer_fn: answering.AnswerFn,
             judge: client_lib.ChatClient, *, image_dir: str, batch_size: int = 8,
             judge_concurrency: int = 4, reviews_path: str | None = None,
             progress: bool = True) -> tuple[dict, list[dict]]:
  """Answers, has the judge review each answer, returns (summary, per-question items).

  reviews_path: optional JSONL journal of judge reviews; a review for the same question and
    the same answer is reused instead of paying for it again (e.g. after a crash).
  """
  answers = answering.answer_all(
      [q.question for q in questions],
      [os.path.join(image_dir, q.image) if q.image else None for q in questions],
      answer_fn, batch_size=batch_size, desc="llava_bench", progress=progress)
  cache = journal.Journal(reviews_path) if reviews_path else None
  cached = {(r["id"], r["answer"]): r["review"] for r in (cache.records if cache else [])}

  def review(index: int) -> str:
    return judge.complete([{"role": "system", "content": JUDGE_SYSTEM},
                           {"role": "user", "content": judge_prompt(questions[index],
                                                                    answers[index])}],
                          temperature=0.2, max_tokens=1024)

  reviews: dict[int, str | None] = {}
  errors: dict[int, str] = {}
  todo = []
  for index, question in enumerate(questions):
    if (question.id, answers[index]) in cached:
      reviews[index] = cached[(question.id, answers[index])]
    else:
      todo.append(index)
  try:
    for index, text, error in client_lib.map_concurrently(review, todo, judge_concurrency):
      reviews[index] = text
      if error is not None:
        if not isinstance(error, (client_lib.ApiError, client_lib.BudgetExhausted)):
          raise error
        errors[index] = str(error)
      elif cache is not None:
        cache.append({"id": questions[index].id, "answer": answers[index], "review": text})
  finally:
    if cache is not None:
      cache.close()
  scores = collections.defaultdict(list)
  items = []
  for i, (question, answer) in enumerate(zip(questions, answers)):
    pair = parse_scores(reviews[i]) if reviews.get(i) else None
    if pair is not None:
      scores[question.category].append(pair)
      scores["all"].append(pair)
    items.append({"question_id": question.id, "category": question.category,
                  "answer": answer, "review": reviews.get(i), "scores": pair,
                  "judge_error": errors.get(i)})
  summary = {}
  for name in ("all",) + CATEGORIES:
    pairs = scores.get(name)
    if not pairs:
      continue
    reference = sum(p[0] for p in pairs) / len(pairs)
    ours = sum(p[1] for p in pairs) / len(pairs)
    summary[name] = {"relative": 100.0 * ours / reference if reference else 0.0,
                     "reference": reference, "ours": ours, "count": len(pairs)}
  summary["unscored"] = sum(item["scores"] is None for item in items)
  return summary, items


def table(summary: dict) -> str:
  rows = [(name, s["relative"], s["ours"], s["reference"], s["count"])
          for name, s in summary.items() if isinstance(s, dict)]
  return results_lib.format_table(
      f"LLaVA-Bench relative score = ours / reference x 100 (unscored reviews: "
      f"{summary['unscored']})", ("category", "relative", "ours", "reference", "count"), rows)
