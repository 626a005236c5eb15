"""MMBench and MMBench-CN: multiple choice with circular evaluation.

Layout: mmbench/mmbench_dev_20230712.tsv and mmbench_cn/mmbench_dev_cn_20231003.tsv (MMBench's
TSV files: index, question, hint, A..D, answer (dev only), category, l2-category, image as
base64; test TSVs have no answer). Any other *.tsv in the folder is read too.
Prompt (LLaVA's, with its single-prediction instruction): "<hint>\n" when there is a hint,
the question, one "X. option" line per option, then "Answer with the option's letter from the
given choices directly." (CN: "请直接回答选项字母。"). 1024 new tokens.
Circular evaluation: a question with n options is asked n times, the options rotated by one
each round (A B C D, B C D A, ...); it counts as right only when every round names the option
that is right in that round. Accuracy overall and per category (percent). For test TSVs (no
answers) the round-0 answers go into the server's upload file, <split>.xlsx, in LLaVA's columns.
"""

import base64
import collections
import csv
import os
import sys

from llava_jax.eval import answer_file
from llava_jax.eval import scienceqa

LETTERS = "ABCD"
INSTRUCTION = {"en": "Answer with the option's letter from the given choices directly.",
               "cn": "请直接回答选项字母。"}
MAX_NEW_TOKENS = 1024
_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def _missing(value) -> bool:
  return value is None or str(value).strip().lower() in ("", "nan", "none")


def read_tsv(path: str) -> list[dict]:
  csv.field_size_limit(sys.maxsize)   # base64 images are long fields
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  for i, row in enumerate(rows, 2):
    for field in ("index", "question", "A", "B", "image"):
      if _missing(row.get(field)):
        raise ValueError(f"{path}: line {i}: missing field {field!r}")
  return rows


def options(row: dict) -> list[str]:
  found = []
  for letter in LETTERS:
    if _missing(row.get(letter)):
      break
    found.append(row[letter])
  return found


def prompt(row: dict, round_options: list[str], lang: str) -> str:
  text = row["question"]
  if not _missing(row.get("hint")):
    text = row["hint"] + "\n" + text
  for letter, option in zip(LETTERS, round_options):
    text += f"\n{letter}. {option}"
  return text + "\n" + INSTRUCTION[lang]


def rounds(row: dict) -> list[list[str]]:
  """The options of every round: round r is the options rotated left by r."""
  opts = options(row)
  return [opts[r:] + opts[:r] for r in range(len(opts))]


def right_letter(row: dict, round_id: int) -> str:
  """The letter the right option has in round `round_id`."""
  n = len(options(row))
  return LETTERS[(LETTERS.index(row["answer"].strip()) - round_id) % n]


def circular_score(rows: list[dict], letters: dict[tuple[str, int], str | None]) -> dict:
  """letters: (index, round) → the letter the model chose (None: none). All rounds must be right."""
  groups = collections.defaultdict(lambda: [0, 0])
  for row in rows:
    n = len(options(row))
    right = all(letters.get((row["index"], r)) == right_letter(row, r) for r in range(n))
    for name in ("all", f"category:{row.get('category', '')}",
                 f"l2:{row.get('l2-category', '')}"):
      groups[name][0] += right
      groups[name][1] += 1
  return {name: {"accuracy": 100.0 * c / n, "correct": c, "count": n}
          for name, (c, n) in sorted(groups.items(), key=lambda kv: kv[0] != "all")}


def write_submission(path: str, rows: list[dict], predictions: dict[str, str]) -> None:
  import openpyxl  # Deferred: only the test-split upload needs it.
  columns = [c for c in rows[0] if c not in _DROPPED]
  columns.insert(min(6, len(columns)), "prediction")
  book = openpyxl.Workbook()
  sheet = book.active
  sheet.append(columns)
  for row in rows:
    sheet.append([predictions.get(row["index"], "") if c == "prediction" else row.get(c)
                  for c in columns])
  book.save(path)


def run_split(tsv: str, runner: answer_file.Runner, bench: str, lang: str) -> dict:
  rows = read_tsv(tsv)
  split = os.path.splitext(os.path.basename(tsv))[0]
  image_dir = runner.path(bench, f"{split}_images")
  os.makedirs(image_dir, exist_ok=True)
  questions = []
  for row in rows:
    image = os.path.join(image_dir, f"{row['index']}.png")
    if not os.path.exists(image):
      with open(image, "wb") as f:
        f.write(base64.b64decode(row["image"]))
    for r, round_options in enumerate(rounds(row)):
      questions.append(answer_file.Question(
          id=f"{split}/{row['index']}/{r}", question_id=row["index"],
          text=prompt(row, round_options, lang), image=image,
          extra={"round_id": r, "options": round_options,
                 "option_char": list(LETTERS[:len(round_options)])}))
  records = runner.answers(bench, questions, MAX_NEW_TOKENS)
  if all(not _missing(row.get("answer")) for row in rows):
    letters = {(q.question_id, q.extra["round_id"]): scienceqa.extract_letter(
        records[q.id]["text"], tuple(q.extra["options"])) for q in questions}
    return circular_score(rows, letters)
  upload = runner.path(bench, f"{split}.xlsx")
  write_submission(upload, rows, {q.question_id: records[q.id]["text"] for q in questions
                                  if q.extra["round_id"] == 0})
  return {"submission": upload}


def run(bench_dir: str, runner: answer_file.Runner, *, bench: str, lang: str) -> dict:
  splits = sorted(n for n in os.listdir(bench_dir) if n.endswith(".tsv"))
  return {os.path.splitext(n)[0]: run_split(os.path.join(bench_dir, n), runner, bench, lang)
          for n in splits}
