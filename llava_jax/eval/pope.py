"""POPE (object hallucination): yes/no questions on COCO, three splits.

Layout: pope/llava_pope_test.jsonl (LLaVA's question file; `category` is the split: adversarial,
popular or random), images in pope/val2014/, labels in pope/coco/coco_pope_<split>.json (POPE's
files: JSON lines with question_id and label "yes"/"no"). 128 new tokens.
An answer counts as "no" when its first sentence has the word No, no or not (commas removed), as
LLaVA's scorer reads it; "yes" otherwise. Per split: accuracy, precision, recall, F1 (yes = the
positive class) and the share of yes answers, in percent; the headline is the mean F1.
"""

import collections
import os

from llava_jax.eval import answer_file

QUESTIONS = "llava_pope_test.jsonl"
MAX_NEW_TOKENS = 128


def says_no(text: str) -> bool:
  first = text.split(".")[0] if "." in text else text
  words = first.replace(",", "").split(" ")
  return "No" in words or "no" in words or "not" in words


def metrics(pairs: list[tuple[bool, bool]]) -> dict:
  """[(predicted yes, label yes)] → percentages (precision/recall 0 when undefined)."""
  tp = sum(p and y for p, y in pairs)
  fp = sum(p and not y for p, y in pairs)
  tn = sum(not p and not y for p, y in pairs)
  fn = sum(not p and y for p, y in pairs)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  n = len(pairs)
  return {"accuracy": 100.0 * (tp + tn) / n, "precision": 100.0 * precision,
          "recall": 100.0 * recall, "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n,
          "count": n}


def read_labels(path: str) -> dict:
  labels = {}
  for i, row in enumerate(answer_file.read_jsonl(path), 1):
    if row.get("label") not in ("yes", "no"):
      raise ValueError(f"{path}: line {i}: field 'label' must be 'yes' or 'no'")
    labels[row["question_id"]] = row["label"] == "yes"
  return labels


def score(records: dict[str, dict], labels_by_split: dict[str, dict]) -> dict:
  pairs = collections.defaultdict(list)
  for r in records.values():
    split = r.get("category")
    if split not in labels_by_split:
      continue
    labels = labels_by_split[split]
    if r["question_id"] not in labels:
      raise ValueError(f"POPE split {split!r}: no label for question {r['question_id']!r}")
    pairs[split].append((not says_no(r["text"]), labels[r["question_id"]]))
  summary = {split: metrics(p) for split, p in sorted(pairs.items())}
  if summary:
    summary["f1"] = sum(s["f1"] for s in summary.values()) / len(summary)
    summary["accuracy"] = sum(s["accuracy"] for k, s in summary.items()
                              if isinstance(s, dict)) / len(pairs)
  return summary


def run(bench_dir: str, runner: answer_file.Runner) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, QUESTIONS),
                                         os.path.join(bench_dir, "val2014"))
  records = runner.answers("pope", questions, MAX_NEW_TOKENS)
  label_dir = os.path.join(bench_dir, "coco")
  labels = {}
  for name in sorted(os.listdir(label_dir)):
    if name.startswith("coco_pope_") and name.endswith(".json"):
      labels[name[len("coco_pope_"):-len(".json")]] = read_labels(os.path.join(label_dir, name))
  return score(records, labels)
