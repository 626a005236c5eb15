"""MM-Vet: open-ended answers graded 0.0-1.0 by a judge model against MM-Vet's reference.

Layout: mm-vet/llava-mm-vet.jsonl (LLaVA's question file; question_id N is MM-Vet's "v1_N"),
images in mm-vet/images/, mm-vet/mm-vet.json (MM-Vet's annotations: "v1_N" → {"question",
"answer" (the reference, "<AND>"/"<OR>" joining required or alternative parts), "capability"
list}). 1024 new tokens. Also writes results.json ({"v1_N": answer}, the file MM-Vet's own
grader and leaderboard read).
The judge is any OpenAI-compatible chat model (--judge_api_base/--judge_model); its grading
prompt below is written for this project: it states MM-Vet's rules (partial credit, <AND> and
<OR>, answers judged on meaning) with four graded examples, and asks for the score alone.
Reported: total and per capability (rec, ocr, know, gen, spat, math) and per capability
combination, the mean score x 100. Grades are journaled, so a re-run pays only for new ones.
"""

import collections
import os
import re

from llava_jax import openai_client as client_lib
from llava_jax.datagen import journal
from llava_jax.eval import answer_file

QUESTIONS = "llava-mm-vet.jsonl"
ANNOTATIONS = "mm-vet.json"
MAX_NEW_TOKENS = 1024

GRADING_PROMPT = """\
You grade answers to questions about images against a reference answer. Give a correctness \
score between 0.0 (wrong) and 1.0 (fully right), in steps of 0.1.
Rules:
- Judge meaning, not wording; extra correct detail is fine, wrong detail lowers the score.
- In the reference, "<AND>" joins parts that all must be present: give credit for the share \
of parts the answer gets right. "<OR>" joins alternatives: any one of them is fully right.
- For long free-form references, score how much of the reference's substance the answer covers.

Question | Reference | Answer | Score
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or x = -1 | 1.0
Which country is this landmark in? | France <OR> Paris | It is the Eiffel Tower in Paris. | 1.0

Reply with the score only.
{question} | {reference} | {answer} |"""


def judge_prompt(question: str, reference: str, answer: str) -> str:
  flat = lambda s: " ".join(s.split()).replace("|", "/")
  return GRADING_PROMPT.format(question=flat(question), reference=flat(reference),
                               answer=flat(answer))


def parse_grade(text: str) -> float | None:
  """The first number in [0, 1] of the judge's reply, or None."""
  for number in re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)", text):
    value = float(number)
    if 0.0 <= value <= 1.0:
      return value
  return None


def score(grades: dict[str, float], annotations: dict) -> dict:
  """grades: "v1_N" → grade (missing: ungraded, left out). Means x 100."""
  groups = collections.defaultdict(list)
  for key, grade in grades.items():
    capabilities = annotations[key]["capability"]
    groups["total"].append(grade)
    for capability in capabilities:
      groups[capability].append(grade)
    groups["+".join(sorted(capabilities))].append(grade)
  return {name: {"score": 100.0 * sum(v) / len(v), "count": len(v)}
          for name, v in sorted(groups.items(), key=lambda kv: kv[0] != "total")}


def grade_all(items: list[tuple[str, str, str, str]], judge: client_lib.ChatClient,
              grades_path: str, concurrency: int = 4) -> tuple[dict[str, float], int]:
  """items: (key, question, reference, answer) → (key → grade, number ungraded)."""
  cache = journal.Journal(grades_path)
  done = {(r["id"], r["answer"]): r["grade"] for r in cache.records}

  def grade(item):
    _, question, reference, answer = item
    return judge.complete([{"role": "user", "content": judge_prompt(question, reference,
                                                                    answer)}],
                          temperature=0.0, max_tokens=8)

  grades, ungraded = {}, 0
  todo = [it for it in items if (it[0], it[3]) not in done]
  for key, _, _, answer in items:
    if (key, answer) in done:
      if done[(key, answer)] is None:
        ungraded += 1   # The judge's reply had no grade; kept, not asked again.
      else:
        grades[key] = done[(key, answer)]
  try:
    for item, text, error in client_lib.map_concurrently(grade, todo, concurrency):
      if error is not None:
        if not isinstance(error, (client_lib.ApiError, client_lib.BudgetExhausted)):
          raise error
        ungraded += 1
        continue
      value = parse_grade(text)
      cache.append({"id": item[0], "answer": item[3], "reply": text, "grade": value})
      if value is None:
        ungraded += 1
      else:
        grades[item[0]] = value
  finally:
    cache.close()
  return grades, ungraded


def run(bench_dir: str, runner: answer_file.Runner, judge: client_lib.ChatClient) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, QUESTIONS),
                                         os.path.join(bench_dir, "images"))
  records = runner.answers("mmvet", questions, MAX_NEW_TOKENS)
  path = os.path.join(bench_dir, ANNOTATIONS)
  annotations = answer_file.read_json(path)
  results = {f"v1_{r['question_id']}": r["text"] for r in records.values()}
  answer_file.write_json(runner.path("mmvet", "results.json"), results)
  items = []
  for key, answer in results.items():
    if key not in annotations or "answer" not in annotations[key]:
      raise ValueError(f"{path}: no entry {key!r} with an 'answer'")
    items.append((key, annotations[key]["question"], annotations[key]["answer"], answer))
  grades, ungraded = grade_all(items, judge, runner.path("mmvet", "grades.jsonl"))
  summary = score(grades, annotations)
  summary["ungraded"] = ungraded
  return summary
