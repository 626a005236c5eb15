"""ScienceQA multiple choice with LLaVA's prompt and answer extraction.

Prompt (LLaVA-1.5's test prompt with the single-prediction instruction):
  Context: <hint>            (only when the problem has a text hint)
  <question>
  A. <choice 0>
  B. <choice 1> ...
  Answer with the option's letter from the given choices directly.
The image, if any, is passed beside the prompt.

Data: ScienceQA's `problems.json` (a dict id → problem; `--split` picks one split, and an
image `image.png` is read from `<image_dir>/<id>/image.png`), or a JSON list / JSONL of
problems with `id`, `question`, `choices`, `answer` (index), optional `hint`, `image` (path
relative to the image folder), `subject`, `grade`.

Accuracy overall, per subject (NAT/SOC/LAN), per context (TXT: has a text hint, IMG: has an
image, NO: neither; TXT and IMG overlap, as in ScienceQA's own scoring) and per grade band.
"""

import collections
import dataclasses
import json
import os
import re

from llava_jax.eval import answering
from llava_jax.eval import results as results_lib

LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str
  question: str
  choices: tuple[str, ...]
  answer: int
  hint: str = ""
  image: str | None = None     # path relative to the image folder
  subject: str = ""
  grade: str = ""

  @property
  def contexts(self) -> list[str]:
    kinds = (["TXT"] if self.hint else []) + (["IMG"] if self.image else [])
    return kinds or ["NO"]


def load(path: str, split: str | None = None) -> list[Problem]:
  with open(path, encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      raw = [(None, json.loads(line)) for line in f if line.strip()]
    else:
      data = json.load(f)
      raw = list(data.items()) if isinstance(data, dict) else [(None, p) for p in data]
  problems = []
  for index, (key, p) in enumerate(raw):
    if split is not None and p.get("split", split) != split:
      continue
    where = f"{path}: problem {key or p.get('id', index)}"
    choices = p.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
      raise ValueError(f"{where}: field 'choices' must be a list of 2..{len(LETTERS)} strings")
    answer = p.get("answer")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
      raise ValueError(f"{where}: field 'answer' must be a choice index < {len(choices)}")
    if not isinstance(p.get("question"), str):
      raise ValueError(f"{where}: field 'question' must be a string")
    image = p.get("image") or None
    if image is not None and key is not None:
      image = os.path.join(key, image)  # problems.json layout: <split dir>/<id>/image.png
    problems.append(Problem(
        id=str(key if key is not None else p.get("id", index)), question=p["question"].strip(),
        choices=tuple(str(c) for c in choices), answer=answer,
        hint=(p.get("hint") or "").strip(), image=image, subject=p.get("subject", ""),
        grade=p.get("grade", "")))
  return problems


def prompt(problem: Problem) -> str:
  lines = [f"Context: {problem.hint}"] if problem.hint else []
  lines.append(problem.question)
  lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(problem.choices)]
  lines.append(INSTRUCTION)
  return "\n".join(lines)


def extract_letter(text: str, choices: tuple[str, ...]) -> str | None:
  """The chosen option's letter, or None when the answer names none.

  Accepts what LLaVA's scorer accepts ('B', 'B. ...', 'The answer is B.') and, in addition,
  '(B)', 'B)' and an answer that repeats one choice's text exactly.
  """
  valid = LETTERS[:len(choices)]
  text = text.strip()
  match = (re.fullmatch(r"\(?([A-J])[.)]?", text)
           or re.match(r"\(?([A-J])(?:[.)]\s|\)$|:\s)", text)
           or re.search(r"[Tt]he answer is:?\s*\(?([A-J])\b", text))
  if match and match.group(1) in valid:
    return match.group(1)
  normalized = text.rstrip(".").strip().lower()
  for i, choice in enumerate(choices):
    if normalized == choice.strip().rstrip(".").lower():
      return valid[i]
  return None


def evaluate(problems: list[Problem], answer_fn: answering.AnswerFn, *, image_dir: str,
             batch_size: int = 8, progress: bool = True) -> tuple[dict, list[dict]]:
  """Returns (summary, per-problem items); accuracies in percent."""
  answers = answering.answer_all(
      [prompt(p) for p in problems],
      [os.path.join(image_dir, p.image) if p.image else None for p in problems],
      answer_fn, batch_size=batch_size, desc="scienceqa", progress=progress)
  groups = collections.defaultdict(lambda: [0, 0])   # name -> [correct, total]
  items = []
  for problem, answer in zip(problems, answers):
    letter = extract_letter(answer, problem.choices)
    correct = letter == LETTERS[problem.answer]
    names = ["all"] + [f"context:{c}" for c in problem.contexts]
    if problem.subject:
      names.append(f"subject:{SUBJECTS.get(problem.subject, problem.subject)}")
    grade = _grade_band(problem.grade)
    if grade:
      names.append(f"grade:{grade}")
    for name in names:
      groups[name][0] += correct
      groups[name][1] += 1
    items.append({"id": problem.id, "prompt": prompt(problem), "image": problem.image,
                  "answer": answer, "parsed": letter, "target": LETTERS[problem.answer],
                  "correct": correct})
  summary = {name: {"accuracy": 100.0 * c / n, "correct": c, "count": n}
             for name, (c, n) in sorted(groups.items(), key=lambda kv: _order(kv[0]))}
  summary["unparsed"] = sum(item["parsed"] is None for item in items)
  return summary, items


def table(summary: dict) -> str:
  rows = [(name, s["accuracy"], s["correct"], s["count"])
          for name, s in summary.items() if isinstance(s, dict)]
  return results_lib.format_table(
      f"ScienceQA (answers with no option letter: {summary['unparsed']})",
      ("group", "accuracy", "correct", "count"), rows)


def _grade_band(grade: str) -> str:
  match = re.fullmatch(r"grade(\d+)", grade or "")
  if not match:
    return ""
  return "G1-6" if int(match.group(1)) <= 6 else "G7-12"


def _order(name: str):
  order = ["all", "subject:NAT", "subject:SOC", "subject:LAN", "context:TXT", "context:IMG",
           "context:NO", "grade:G1-6", "grade:G7-12"]
  return (order.index(name) if name in order else len(order), name)
