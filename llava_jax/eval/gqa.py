"""GQA test-dev balanced: exact-match accuracy, as GQA's eval.py computes it.

Layout: gqa/llava_gqa_testdev_balanced.jsonl (LLaVA's question file, with the short-answer
suffix), images in gqa/data/images/, answers in gqa/data/testdev_balanced_questions.json (GQA's
file: question id → {"answer", ...}). A prediction is the answer with a trailing period removed,
lowercased (LLaVA's conversion); it is right when it equals GQA's answer. 128 new tokens.
Also writes testdev_balanced_predictions.json ([{"questionId", "prediction"}]) for GQA's tool.
"""

import os

from llava_jax.eval import answer_file

QUESTIONS = "llava_gqa_testdev_balanced.jsonl"
ANSWERS = os.path.join("data", "testdev_balanced_questions.json")
MAX_NEW_TOKENS = 128


def prediction(text: str) -> str:
  return text.rstrip(".").lower()


def accuracy(predictions: dict[str, str], questions: dict[str, dict], where: str) -> dict:
  correct = 0
  for qid, pred in predictions.items():
    if qid not in questions or "answer" not in questions[qid]:
      raise ValueError(f"{where}: question {qid!r} has no 'answer'")
    correct += pred == questions[qid]["answer"]
  return {"accuracy": 100.0 * correct / len(predictions) if predictions else 0.0,
          "correct": correct, "count": len(predictions)}


def run(bench_dir: str, runner: answer_file.Runner) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, QUESTIONS),
                                         os.path.join(bench_dir, "data", "images"))
  records = runner.answers("gqa", questions, MAX_NEW_TOKENS)
  predictions = {str(r["question_id"]): prediction(r["text"]) for r in records.values()}
  answer_file.write_json(runner.path("gqa", "testdev_balanced_predictions.json"),
                         [{"questionId": q, "prediction": p} for q, p in predictions.items()])
  path = os.path.join(bench_dir, ANSWERS)
  return accuracy(predictions, answer_file.read_json(path), path)
