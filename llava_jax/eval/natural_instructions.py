"""Super-NaturalInstructions (Tk-Instruct's protocol): instructions → unseen tasks, ROUGE-L.

Reads the natural-instructions repository layout: tasks/<task>.json (Definition, Positive
Examples and Negative Examples with input/output/explanation, Instances with input and a list
of outputs, Categories) and splits/default/{train,test}_tasks.txt (one task name a line).
Prompts use Tk-Instruct's encodings:
  def           "Definition: ...\n\n" + "Now complete the following example -\nInput: ...\nOutput: "
  def_pos2      + the first two positive examples (" Positive Example 1 -\nInput: ...\n Output: ...")
  def_pos2_neg2_expl  + two negative examples, every example with its " Explanation: ..."
(each part gets a final period when it ends without punctuation, as Tk-Instruct does).
`training_records` writes the train tasks as text-only LLaVA records; `evaluate` answers up
to 100 instances of each test task (greedy, 128 new tokens, Tk-Instruct's target length) and
reports ROUGE-L (`text_rouge`, max over the instance's outputs) and exact match (lowercase,
punctuation, articles and extra spaces removed) per task, per category and overall.
"""

import collections
import dataclasses
import os
import re
import string

from llava_jax.eval import answer_file
from llava_jax.eval import text_rouge

ENCODINGS = ("def", "def_pos2", "def_pos2_neg2_expl")
MAX_NEW_TOKENS = 128
MAX_INSTANCES = 100     # per task, Tk-Instruct's train and eval cap


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  definition: str
  positives: tuple[dict, ...]
  negatives: tuple[dict, ...]
  instances: tuple[dict, ...]
  categories: tuple[str, ...]


def read_task(path: str) -> Task:
  data = answer_file.read_json(path)
  name = os.path.splitext(os.path.basename(path))[0]
  definition = data.get("Definition")
  if isinstance(definition, list):
    definition = definition[0] if definition else None
  if not isinstance(definition, str) or not definition.strip():
    raise ValueError(f"{path}: field 'Definition' must be a non-empty string or list")
  for field in ("Positive Examples", "Negative Examples"):
    for i, example in enumerate(data.get(field, [])):
      for key in ("input", "output"):
        if not isinstance(example.get(key), str):
          raise ValueError(f"{path}: {field}[{i}]: field {key!r} must be a string")
  instances = data.get("Instances")
  if not isinstance(instances, list):
    raise ValueError(f"{path}: field 'Instances' must be a list")
  for i, instance in enumerate(instances):
    outputs = instance.get("output")
    if not isinstance(instance.get("input"), str) or not isinstance(outputs, list) or not (
        outputs and all(isinstance(o, str) for o in outputs)):
      raise ValueError(f"{path}: Instances[{i}]: needs an 'input' string and an 'output' list "
                       "of strings")
  return Task(name=name, definition=definition, positives=tuple(data.get("Positive Examples",
              [])), negatives=tuple(data.get("Negative Examples", [])),
              instances=tuple(instances), categories=tuple(data.get("Categories") or ["none"]))


def read_split(repo_dir: str, split: str) -> list[Task]:
  path = os.path.join(repo_dir, "splits", "default", f"{split}_tasks.txt")
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f if line.strip()]
  return [read_task(os.path.join(repo_dir, "tasks", f"{name}.json")) for name in names]


def _period(text: str) -> str:
  return text if text and text[-1] in string.punctuation else text + "."


def _example(kind: str, index: int, example: dict, explain: bool) -> str:
  text = f" {kind} Example {index} -\n" + _period(f"Input: {example['input'].strip()}") + "\n"
  text += _period(f" Output: {example['output'].strip()}") + "\n"
  if explain and example.get("explanation"):
    text += _period(f" Explanation: {example['explanation'].strip()}") + "\n"
  return text + "\n"


def encode(task: Task, instance_input: str, encoding: str) -> str:
  """Tk-Instruct's source text for one instance."""
  if encoding not in ENCODINGS:
    raise ValueError(f"unknown encoding {encoding!r}; choose from {ENCODINGS}")
  source = _period("Definition: " + task.definition.strip()) + "\n\n"
  if encoding != "def":
    explain = encoding == "def_pos2_neg2_expl"
    source += "".join(_example("Positive", i + 1, e, explain)
                      for i, e in enumerate(task.positives[:2]))
    if explain:
      source += "".join(_example("Negative", i + 1, e, explain)
                        for i, e in enumerate(task.negatives[:2]))
  task_input = _period(f"Now complete the following example -\nInput: {instance_input.strip()}")
  return source + task_input + "\nOutput: "


def training_records(tasks: list[Task], encoding: str,
                     max_instances: int = MAX_INSTANCES) -> list[dict]:
  """Text-only LLaVA records: the encoded instance → its first output."""
  return [{"id": f"{task.name}-{instance.get('id', i)}", "conversations": [
      {"from": "human", "value": encode(task, instance["input"], encoding)},
      {"from": "gpt", "value": instance["output"][0]}]}
      for task in tasks for i, instance in enumerate(task.instances[:max_instances])]


def normalize_answer(text: str) -> str:
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def score(items: list[dict]) -> dict:
  """items: {"task", "categories", "answer", "references"} → ROUGE-L / exact match per group."""
  groups = collections.defaultdict(list)
  for item in items:
    rouge = text_rouge.rouge_l(item["answer"], item["references"])
    exact = any(normalize_answer(item["answer"]) == normalize_answer(r)
                for r in item["references"])
    item.update(rougeL=rouge, exact_match=exact)
    for name in ["all", f"task:{item['task']}"] + [f"category:{c}" for c in item["categories"]]:
      groups[name].append((rouge, exact))
  return {name: {"rougeL": sum(r for r, _ in v) / len(v),
                 "exact_match": 100.0 * sum(e for _, e in v) / len(v), "count": len(v)}
          for name, v in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0]))}


def evaluate_text(bench: str, examples: list[dict], runner: answer_file.Runner) -> tuple:
  """examples: {"id", "prompt", "references", "task", "categories"} → (summary, items)."""
  questions = [answer_file.Question(id=e["id"], question_id=e["id"], text=e["prompt"],
                                    image=None) for e in examples]
  records = runner.answers(bench, questions, MAX_NEW_TOKENS)
  items = [{"id": e["id"], "task": e["task"], "categories": e["categories"],
            "answer": records[e["id"]]["text"], "references": e["references"]}
           for e in examples]
  return score(items), items


def evaluate(repo_dir: str, runner: answer_file.Runner, encoding: str = "def_pos2",
             max_instances: int = MAX_INSTANCES) -> tuple[dict, list[dict]]:
  examples = [{"id": f"{task.name}-{instance.get('id', i)}", "task": task.name,
               "categories": list(task.categories),
               "prompt": encode(task, instance["input"], encoding),
               "references": instance["output"]}
              for task in read_split(repo_dir, "test")
              for i, instance in enumerate(task.instances[:max_instances])]
  return evaluate_text(f"natural_instructions_{encoding}", examples, runner)


def table(summary: dict, title: str) -> str:
  from llava_jax.eval import results
  rows = [(name, s["rougeL"], s["exact_match"], s["count"]) for name, s in summary.items()]
  return results.format_table(title, ("group", "rougeL", "exact_match", "count"), rows)
