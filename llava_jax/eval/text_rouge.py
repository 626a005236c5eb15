"""Text tasks scored by ROUGE-L against reference outputs (Natural Instructions / Tk-Instruct).

Data: JSONL or a JSON list of either
  {"id", "prompt" | "instruction" (+ optional "input"), "reference" | "references" | "output",
   "task"?}
or text-only LLaVA records (first human turn = prompt, first gpt turn = reference), e.g. the
output of `python -m llava_jax.datagen.text`. ROUGE-L F-measure from Google's `rouge-score`
package (Porter stemming; a tokenizer that keeps non-ASCII words), the max over an example's
references, in percent; exact match too.
"""

import collections
import functools
import json
import re

from nltk.stem import porter
from rouge_score import rouge_scorer

from llava_jax.eval import answering
from llava_jax.eval import results as results_lib


def load(path: str) -> list[dict]:
  """→ [{"id", "prompt", "references": [str, ...], "task"}]."""
  with open(path, encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      raw = [json.loads(line) for line in f if line.strip()]
    else:
      raw = json.load(f)
  examples = []
  for index, ex in enumerate(raw):
    where = f"{path}: example {ex.get('id', index)}"
    if "conversations" in ex:
      turns = ex["conversations"]
      if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
        raise ValueError(f"{where}: field 'conversations' must start with a human then a gpt "
                         "turn")
      if "image" in ex:
        raise ValueError(f"{where}: the text task takes text-only records (this one has an "
                         "'image')")
      prompt, references = turns[0]["value"], [turns[1]["value"]]
    else:
      prompt = ex.get("prompt")
      if prompt is None and "instruction" in ex:
        prompt = ex["instruction"] + (f"\n\n{ex['input']}" if ex.get("input") else "")
      references = ex.get("references", ex.get("reference", ex.get("output")))
      if isinstance(references, str):
        references = [references]
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f"{where}: needs a 'prompt' (or 'instruction') string")
    if not references or not all(isinstance(r, str) for r in references):
      raise ValueError(f"{where}: needs 'reference' (a string) or 'references' (strings)")
    task = ex.get("task") or str(ex.get("id", "")).split("-")[0] or "all"
    examples.append({"id": str(ex.get("id", index)), "prompt": prompt,
                     "references": list(references), "task": task})
  return examples


def rouge_l(prediction: str, references: list[str]) -> float:
  """Max ROUGE-L F-measure over the references, in percent."""
  scorer = _scorer()
  return 100.0 * max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def evaluate(examples: list[dict], answer_fn: answering.AnswerFn, *, batch_size: int = 8,
             progress: bool = True) -> tuple[dict, list[dict]]:
  answers = answering.answer_all([e["prompt"] for e in examples], [None] * len(examples),
                                 answer_fn, batch_size=batch_size, desc="text",
                                 progress=progress)
  groups = collections.defaultdict(list)
  items = []
  for ex, answer in zip(examples, answers):
    score = rouge_l(answer, ex["references"])
    exact = any(_norm(answer) == _norm(r) for r in ex["references"])
    groups["all"].append((score, exact))
    groups[f"task:{ex['task']}"].append((score, exact))
    items.append({"id": ex["id"], "task": ex["task"], "answer": answer,
                  "references": ex["references"], "rougeL": score, "exact_match": exact})
  summary = {name: {"rougeL": sum(s for s, _ in v) / len(v),
                    "exact_match": 100.0 * sum(e for _, e in v) / len(v), "count": len(v)}
             for name, v in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0]))}
  return summary, items


def table(summary: dict) -> str:
  rows = [(name, s["rougeL"], s["exact_match"], s["count"]) for name, s in summary.items()]
  return results_lib.format_table("Text tasks: ROUGE-L F (x100) and exact match (%)",
                                  ("group", "rougeL", "exact_match", "count"), rows)


class _UnicodeTokenizer:
  """rouge-score's default tokenizer with Unicode words kept.

  The default one maps every non-[a-z0-9] character to a space, which splits "schläft" into
  "schl" + "ft" and makes non-English references score wrongly. Same lowercasing and Porter
  stemming of longer ASCII words as the default.
  """

  def __init__(self):
    self._stemmer = porter.PorterStemmer()

  def tokenize(self, text: str) -> list[str]:
    return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t
            for t in re.findall(r"\w+", text.lower())]


@functools.cache
def _scorer() -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())  # Built once.


def _norm(text: str) -> str:
  return " ".join(text.lower().strip().rstrip(".").split())
