"""MME: yes/no questions, two per image, over 10 perception and 4 cognition subtasks.

Layout: MME/llava_mme.jsonl (LLaVA's question file: `image` relative to the release folder,
`category` the subtask, `text` = MME's question + "\nAnswer the question using a single word or
phrase.") and MME/MME_Benchmark_release_version/ (MME's release: per subtask the images and
their ground truth, "question<TAB>answer" lines in <stem>.txt beside the image or in
questions_answers_YN/<stem>.txt). 128 new tokens.
Scoring is MME's: an answer is "yes"/"no" if it is one, else the one of them its first four
characters contain, else wrong. Per subtask acc = right questions, acc+ = images with both
questions right (percent); score = acc + acc+; perception and cognition are sums of scores.
"""

import collections
import os

from llava_jax.eval import answer_file

QUESTIONS = "llava_mme.jsonl"
RELEASE = "MME_Benchmark_release_version"
SUFFIX = "\nAnswer the question using a single word or phrase."
MAX_NEW_TOKENS = 128
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")


def parse_answer(text: str) -> str:
  text = text.lower().strip()
  if text in ("yes", "no"):
    return text
  head = text[:4]
  return "yes" if "yes" in head else "no" if "no" in head else "other"


def ground_truth(release_dir: str, image: str) -> dict[str, str]:
  """question → "yes"/"no" for one image of the release."""
  folder, name = os.path.split(os.path.join(release_dir, image))
  stem = os.path.splitext(name)[0] + ".txt"
  for path in (os.path.join(folder, stem),
               os.path.join(os.path.dirname(folder), "questions_answers_YN", stem)):
    if os.path.exists(path):
      break
  else:
    raise ValueError(f"{release_dir}: no ground truth file {stem} for image {image}")
  truth = {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      question, sep, answer = line.rstrip("\n").rpartition("\t")
      if not sep or answer.strip().lower() not in ("yes", "no"):
        raise ValueError(f"{path}:{line_no}: expected 'question<TAB>yes|no'")
      truth[question.strip()] = answer.strip().lower()
  return truth


def score(rows: list[tuple[str, str, str, str]]) -> dict:
  """[(subtask, image, predicted text, truth)] → per-subtask scores and the two totals."""
  per_image = collections.defaultdict(list)
  for subtask, image, text, truth in rows:
    per_image[(subtask, image)].append(parse_answer(text) == truth)
  subtasks = collections.defaultdict(lambda: [0, 0, 0, 0])   # right, questions, full, images
  for (subtask, _), rights in per_image.items():
    counts = subtasks[subtask]
    counts[0] += sum(rights)
    counts[1] += len(rights)
    counts[2] += all(rights)
    counts[3] += 1
  summary = {}
  for subtask, (right, n, full, images) in sorted(subtasks.items()):
    acc, acc_plus = 100.0 * right / n, 100.0 * full / images
    summary[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                        "count": n}
  summary["perception"] = sum(summary[t]["score"] for t in PERCEPTION if t in summary)
  summary["cognition"] = sum(summary[t]["score"] for t in COGNITION if t in summary)
  return summary


def run(bench_dir: str, runner: answer_file.Runner) -> dict:
  release = os.path.join(bench_dir, RELEASE)
  questions = answer_file.read_questions(os.path.join(bench_dir, QUESTIONS), release)
  records = runner.answers("mme", questions, MAX_NEW_TOKENS)
  rows = []
  truths = {}
  for q in questions:
    image = os.path.relpath(q.image, release)
    if image not in truths:
      truths[image] = ground_truth(release, image)
    question = q.text.removesuffix(SUFFIX).strip()
    if question not in truths[image]:
      raise ValueError(f"{release}: image {image} has no ground truth for {question!r}")
    rows.append((q.extra.get("category", image.split(os.sep)[0]), image,
                 records[q.id]["text"], truths[image][question]))
  return score(rows)
