"""LLaVA-1.5's twelve benchmarks over one data root, summarized as LLaVA's model-zoo row.

`run(data_root, runner, judge)` runs every benchmark whose folder (LLaVA's
`playground/data/eval/` names) is under `data_root`, in the model zoo's column order, and returns
{benchmark: summary}; `table(results)` prints the row. Benchmarks that need a judge (MM-Vet,
LLaVA-Bench) are skipped with a note when no judge is given. Answers are journaled in
<out_dir>/<bench>/answers.jsonl, so a killed run resumes.
"""

import dataclasses
import os
from typing import Callable

from llava_jax import openai_client as client_lib
from llava_jax.eval import answer_file
from llava_jax.eval import gqa
from llava_jax.eval import llava_bench
from llava_jax.eval import mmbench
from llava_jax.eval import mme
from llava_jax.eval import mmvet
from llava_jax.eval import pope
from llava_jax.eval import scienceqa
from llava_jax.eval import seed
from llava_jax.eval import vqa

SCIENCEQA_MAX_NEW_TOKENS = 1024    # LLaVA's model_vqa_science / model_vqa budgets
LLAVA_BENCH_MAX_NEW_TOKENS = 1024


def run_scienceqa(bench_dir: str, runner: answer_file.Runner) -> dict:
  """scienceqa/problems.json (ScienceQA's file, test split), images in images/test/<id>/."""
  problems = scienceqa.load(os.path.join(bench_dir, "problems.json"), "test")
  image_dir = os.path.join(bench_dir, "images", "test")
  questions = [answer_file.Question(id=p.id, question_id=p.id, text=scienceqa.prompt(p),
                                    image=os.path.join(image_dir, p.image) if p.image else None)
               for p in problems]
  records = runner.answers("scienceqa", questions, SCIENCEQA_MAX_NEW_TOKENS)
  summary, _ = scienceqa.evaluate(problems, answer_file.replay(questions, records),
                                  image_dir=image_dir, progress=False)
  return summary


def run_llava_bench(bench_dir: str, runner: answer_file.Runner,
                    judge: client_lib.ChatClient) -> dict:
  """llava-bench-in-the-wild/: questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/."""
  read = lambda name: answer_file.read_jsonl(os.path.join(bench_dir, name))
  captions = {c["image"]: c["caption"] for c in read("context.jsonl")}
  references = {r["question_id"]: r["text"] for r in read("answers_gpt4.jsonl")}
  bench_questions = []
  for q in read("questions.jsonl"):
    if q["question_id"] not in references:
      raise ValueError(f"{bench_dir}/answers_gpt4.jsonl: no reference for question "
                       f"{q['question_id']!r}")
    bench_questions.append(llava_bench.Question(
        id=str(q["question_id"]), image=q["image"], category=q["category"], question=q["text"],
        context=captions.get(q["image"], ""), reference=references[q["question_id"]]))
  image_dir = os.path.join(bench_dir, "images")
  questions = [answer_file.Question(id=q.id, question_id=q.id, text=q.question,
                                    image=os.path.join(image_dir, q.image), extra={
                                        "category": q.category}) for q in bench_questions]
  records = runner.answers("llava_bench", questions, LLAVA_BENCH_MAX_NEW_TOKENS)
  summary, _ = llava_bench.evaluate(
      bench_questions, answer_file.replay(questions, records), judge, image_dir=image_dir,
      reviews_path=runner.path("llava_bench", "reviews.jsonl"), progress=False)
  return summary


@dataclasses.dataclass(frozen=True)
class Benchmark:
  column: str                          # the model-zoo column
  folder: str                          # under the data root
  run: Callable                        # (bench_dir, runner[, judge]) -> summary
  headline: Callable[[dict], float | None]
  needs_judge: bool = False


def _get(*keys):
  def read(summary):
    for key in keys:
      if not isinstance(summary, dict) or key not in summary:
        return None
      summary = summary[key]
    return summary
  return read


def _mmbench_headline(summary: dict) -> float | None:
  scored = [s["all"]["accuracy"] for s in summary.values() if "all" in s]
  return scored[0] if scored else None


BENCHMARKS = (
    Benchmark("VQAv2", "vqav2", vqa.run_vqav2, _get("accuracy")),
    Benchmark("GQA", "gqa", gqa.run, _get("accuracy")),
    Benchmark("VizWiz", "vizwiz", vqa.run_vizwiz, _get("accuracy")),
    Benchmark("SQA", "scienceqa", run_scienceqa, _get("context:IMG", "accuracy")),
    Benchmark("TextVQA", "textvqa", vqa.run_textvqa, _get("accuracy")),
    Benchmark("POPE", "pope", pope.run, _get("f1")),
    Benchmark("MME", "MME", mme.run, _get("perception")),
    Benchmark("MM-Bench", "mmbench",
              lambda d, r: mmbench.run(d, r, bench="mmbench", lang="en"), _mmbench_headline),
    Benchmark("MM-Bench-CN", "mmbench_cn",
              lambda d, r: mmbench.run(d, r, bench="mmbench_cn", lang="cn"),
              _mmbench_headline),
    Benchmark("SEED", "seed_bench", seed.run, _get("all", "accuracy")),
    Benchmark("LLaVA-Bench-Wild", "llava-bench-in-the-wild", run_llava_bench,
              _get("all", "relative"), needs_judge=True),
    Benchmark("MM-Vet", "mm-vet", mmvet.run, _get("total", "score"), needs_judge=True),
)


def run(data_root: str, runner: answer_file.Runner, judge: client_lib.ChatClient | None,
        only: set[str] | None = None) -> dict:
  """Runs every benchmark found under data_root (or those named in `only`)."""
  if not os.path.isdir(data_root):
    raise ValueError(f"--data_root {data_root}: not a directory")
  results = {}
  for bench in BENCHMARKS:
    bench_dir = os.path.join(data_root, bench.folder)
    if not os.path.isdir(bench_dir) or (only and bench.folder not in only):
      continue
    if bench.needs_judge and judge is None:
      results[bench.folder] = {"skipped": "needs a judge (--judge_api_base)"}
      continue
    args = (judge,) if bench.needs_judge else ()
    results[bench.folder] = bench.run(bench_dir, runner, *args)
  if not results:
    raise ValueError(f"--data_root {data_root}: none of the benchmark folders "
                     f"{[b.folder for b in BENCHMARKS]} is there")
  return results


def table(results: dict, model: str = "llava_jax") -> str:
  """One Markdown row in the model zoo's columns; '-' for benchmarks not run or not scored."""
  cells = []
  for bench in BENCHMARKS:
    value = bench.headline(results[bench.folder]) if bench.folder in results else None
    cells.append("-" if value is None else f"{value:.1f}")
  header = "| Model | " + " | ".join(b.column for b in BENCHMARKS) + " |"
  rule = "|---" * (len(BENCHMARKS) + 1) + "|"
  return "\n".join([header, rule, f"| {model} | " + " | ".join(cells) + " |"])
