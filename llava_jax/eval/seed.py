"""SEED-Bench: four-option multiple choice, accuracy per evaluation dimension.

Layout: seed_bench/llava-seed-bench.jsonl (LLaVA's question file: options as "A. ..." lines and
"Answer with the option's letter from the given choices directly."; video questions point at a
middle frame), images under seed_bench/, and seed_bench/SEED-Bench.json (SEED's annotations:
"questions" with question_id, answer letter, question_type_id, data_type; "question_type":
name → id). 128 new tokens. An answer is right when its option letter (read as for ScienceQA:
"B", "B.", "(B)", "The answer is B") is SEED's. Also writes the leaderboard's upload file
(JSON lines {"question_id", "prediction"}).
"""

import collections
import json
import os

from llava_jax.eval import answer_file
from llava_jax.eval import scienceqa

QUESTIONS = "llava-seed-bench.jsonl"
ANNOTATIONS = "SEED-Bench.json"
MAX_NEW_TOKENS = 128
_OPTIONS = ("", "", "", "")   # four options: letters A-D


def score(predictions: dict[str, str], annotations: dict, where: str) -> dict:
  """predictions: question_id (str) → answer text."""
  names = {v: k for k, v in annotations.get("question_type", {}).items()}
  groups = collections.defaultdict(lambda: [0, 0])
  for q in annotations["questions"]:
    qid = str(q["question_id"])
    if qid not in predictions:
      continue
    if q.get("answer") not in ("A", "B", "C", "D"):
      raise ValueError(f"{where}: question {qid}: field 'answer' must be a letter A-D")
    right = scienceqa.extract_letter(predictions[qid], _OPTIONS) == q["answer"]
    for group in ("all", q.get("data_type", "image"),
                  names.get(q["question_type_id"], str(q["question_type_id"]))):
      groups[group][0] += right
      groups[group][1] += 1
  return {name: {"accuracy": 100.0 * right / n, "correct": right, "count": n}
          for name, (right, n) in groups.items()}


def run(bench_dir: str, runner: answer_file.Runner) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, QUESTIONS), bench_dir)
  records = runner.answers("seed", questions, MAX_NEW_TOKENS)
  predictions = {str(r["question_id"]): r["text"] for r in records.values()}
  path = os.path.join(bench_dir, ANNOTATIONS)
  summary = score(predictions, answer_file.read_json(path), path)
  upload = runner.path("seed", "answers_upload.jsonl")
  with open(upload, "w", encoding="utf-8") as f:
    for r in records.values():
      f.write(json.dumps({"question_id": r["question_id"],
                                      "prediction": r["text"]}) + "\n")
  summary["submission"] = upload
  return summary
