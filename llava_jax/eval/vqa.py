"""VQAv2, VizWiz and TextVQA: short answers scored by VQA accuracy (`vqa_answers`).

Layouts (LLaVA's `playground/data/eval/`; annotation files are optional and give a local score):
  vqav2/llava_vqav2_mscoco_test-dev2015.jsonl, images test2015/; optional
    llava_vqav2_mscoco_test2015.jsonl (the full test split the submission must cover) and
    v2_mscoco_val2014_annotations.json (official format) to score annotated question ids.
  vizwiz/llava_test.jsonl, images test/; optional Annotations/val.json (official format,
    matched by image name).
  textvqa/llava_textvqa_val_v051_ocr.jsonl, images train_images/, TextVQA_0.5.1_val.json
    (matched, as LLaVA does, by question_id = image_id and the question line of the prompt).
The question files already end with LLaVA's instructions ("Answer the question using a single
word or phrase."; VizWiz also asks for 'Unanswerable'; TextVQA lists "Reference OCR token: ...").
128 new tokens, greedy. Submission files: answers_upload/ in the EvalAI formats
([{"question_id", "answer"}] for VQAv2, [{"image", "answer"}] for VizWiz), answers normalized.
"""

import os
import re

from llava_jax.eval import answer_file
from llava_jax.eval import vqa_answers

MAX_NEW_TOKENS = 128
VQAV2_QUESTIONS = "llava_vqav2_mscoco_test-dev2015.jsonl"
VQAV2_TEST = "llava_vqav2_mscoco_test2015.jsonl"
VQAV2_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
VIZWIZ_QUESTIONS = "llava_test.jsonl"
VIZWIZ_ANNOTATIONS = os.path.join("Annotations", "val.json")
TEXTVQA_QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
TEXTVQA_ANNOTATIONS = "TextVQA_0.5.1_val.json"


def mean_accuracy(pairs: list[tuple[str, list[str]]]) -> dict:
  """[(prediction, human answers)] → {"accuracy": percent, "count"}."""
  scores = [vqa_answers.accuracy(p, humans) for p, humans in pairs]
  return {"accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0,
          "count": len(scores)}


def _humans(answers, where: str) -> list[str]:
  if not isinstance(answers, list) or not answers:
    raise ValueError(f"{where}: field 'answers' must be a non-empty list")
  return [a["answer"] if isinstance(a, dict) else a for a in answers]


def vqav2_annotations(path: str) -> dict:
  """Official VQA annotations → question_id → human answers."""
  data = answer_file.read_json(path)
  if not isinstance(data, dict) or "annotations" not in data:
    raise ValueError(f"{path}: expected the official format with an 'annotations' list")
  return {a["question_id"]: _humans(a.get("answers"), f"{path}: question {a['question_id']}")
          for a in data["annotations"]}


def vizwiz_annotations(path: str) -> dict:
  """Official VizWiz annotations (a list of {image, question, answers}) → image → answers."""
  return {a["image"]: _humans(a.get("answers"), f"{path}: image {a.get('image')}")
          for a in answer_file.read_json(path)}


def textvqa_question(prompt: str) -> str:
  """The question of a TextVQA prompt: the first line, the one after a leading "Reference OCR
  token:" line, or, in the "OCR tokens: ... Question: ... Short answer:" variant, the middle."""
  match = re.match(r"OCR tokens: .*?Question: (.*?) Short answer:", prompt, re.S)
  if match:
    return match.group(1).lower()
  lines = prompt.split("\n")
  if lines[0].startswith("Reference OCR token:") and len(lines) > 1:
    return lines[1].lower()
  return lines[0].lower()


def textvqa_annotations(path: str) -> dict:
  data = answer_file.read_json(path)
  if not isinstance(data, dict) or "data" not in data:
    raise ValueError(f"{path}: expected TextVQA's format with a 'data' list")
  return {(a["image_id"], a["question"].lower()): _humans(
      a.get("answers"), f"{path}: question {a.get('question_id')}") for a in data["data"]}


def vqav2_submission(records: dict[str, dict], test_questions: list[dict] | None) -> list[dict]:
  """EvalAI's VQAv2 upload: every test question (unanswered ones as ""), answers normalized."""
  by_id = {r["question_id"]: r["text"] for r in records.values()}
  ids = [q["question_id"] for q in test_questions] if test_questions else list(by_id)
  return [{"question_id": i, "answer": vqa_answers.normalize(by_id[i]) if i in by_id else ""}
          for i in ids]


def vizwiz_submission(questions: list[answer_file.Question],
                      records: dict[str, dict]) -> list[dict]:
  return [{"image": os.path.basename(q.image), "answer": vqa_answers.normalize(
      records[q.id]["text"])} for q in questions]


def run_vqav2(bench_dir: str, runner: answer_file.Runner) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, VQAV2_QUESTIONS),
                                         os.path.join(bench_dir, "test2015"))
  records = runner.answers("vqav2", questions, MAX_NEW_TOKENS)
  test_path = os.path.join(bench_dir, VQAV2_TEST)
  test = answer_file.read_jsonl(test_path) if os.path.exists(test_path) else None
  upload = runner.path("vqav2", "answers_upload.json")
  answer_file.write_json(upload, vqav2_submission(records, test))
  summary = {"submission": upload}
  annotations_path = os.path.join(bench_dir, VQAV2_ANNOTATIONS)
  if os.path.exists(annotations_path):
    humans = vqav2_annotations(annotations_path)
    summary.update(mean_accuracy([(r["text"], humans[r["question_id"]])
                                  for r in records.values() if r["question_id"] in humans]))
  return summary


def run_vizwiz(bench_dir: str, runner: answer_file.Runner) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, VIZWIZ_QUESTIONS),
                                         os.path.join(bench_dir, "test"))
  records = runner.answers("vizwiz", questions, MAX_NEW_TOKENS)
  upload = runner.path("vizwiz", "answers_upload.json")
  answer_file.write_json(upload, vizwiz_submission(questions, records))
  summary = {"submission": upload}
  annotations_path = os.path.join(bench_dir, VIZWIZ_ANNOTATIONS)
  if os.path.exists(annotations_path):
    humans = vizwiz_annotations(annotations_path)
    pairs = [(records[q.id]["text"], humans[os.path.basename(q.image)]) for q in questions
             if os.path.basename(q.image) in humans]
    summary.update(mean_accuracy(pairs))
  return summary


def run_textvqa(bench_dir: str, runner: answer_file.Runner) -> dict:
  questions = answer_file.read_questions(os.path.join(bench_dir, TEXTVQA_QUESTIONS),
                                         os.path.join(bench_dir, "train_images"))
  records = runner.answers("textvqa", questions, MAX_NEW_TOKENS)
  annotations_path = os.path.join(bench_dir, TEXTVQA_ANNOTATIONS)
  humans = textvqa_annotations(annotations_path)
  pairs = []
  for r in records.values():
    key = (r["question_id"], textvqa_question(r["prompt"]))
    if key not in humans:
      raise ValueError(f"{annotations_path}: no annotation for image_id {key[0]!r} and "
                       f"question {key[1]!r}")
    pairs.append((r["text"], humans[key]))
  return mean_accuracy(pairs)
