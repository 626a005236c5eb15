"""`--suite=llava15`: every benchmark under a data root, the model-zoo row, resuming, budgets."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

import eval_fixtures
import fake_openai
from llava_jax import openai_client as client_lib
from llava_jax.eval import answer_file
from llava_jax.eval import llava_bench
from llava_jax.eval import suite
import tiny

SAMPLES = eval_fixtures.SAMPLES
REPO = eval_fixtures.REPO
HEADER = ("| Model | VQAv2 | GQA | VizWiz | SQA | TextVQA | POPE | MME | MM-Bench | MM-Bench-CN | "
          "SEED | LLaVA-Bench-Wild | MM-Vet |")


def judge_and_model(request) -> str:
  """One fake server: the two judges by their prompts, the model otherwise ("Yes")."""
  first = request["messages"][0]["content"]
  if first == llava_bench.JUDGE_SYSTEM:
    return "8 6\nBecause."
  if isinstance(first, str) and first.startswith("You grade answers"):
    return "0.4"
  return "Yes"


# What answering "Yes" to everything scores on the samples (each scorer's own tests work the
# numbers out): only POPE (F1 2/3 on both splits) and MME (one of each image's two) score.
YES_ROW = "| 0.0 | 0.0 | 0.0 | 0.0 | 0.0 | 66.7 | 100.0 | 0.0 | 0.0 | 0.0 | 75.0 | 40.0 |"


class SuiteTest(absltest.TestCase):

  def test_every_benchmark_runs_with_llavas_budgets(self):
    budgets = []
    with tempfile.TemporaryDirectory() as tmp, fake_openai.FakeOpenAI(judge_and_model) as server:
      judge = client_lib.ChatClient(api_base=server.api_base, model="judge")
      runner = eval_fixtures.runner(lambda p, i: ["Yes"] * len(p), tmp, budgets)
      results = suite.run(SAMPLES, runner, judge)
      table = suite.table(results, "tiny")
    self.assertEqual(list(results), [b.folder for b in suite.BENCHMARKS])
    self.assertEqual(table.splitlines()[0], HEADER)
    self.assertEqual(table.splitlines()[2], "| tiny " + YES_ROW)
    # Short-answer benchmarks 128 new tokens; SQA, MMBench (x2), LLaVA-Bench, MM-Vet 1024.
    self.assertEqual(budgets, [128, 128, 128, 1024, 128, 128, 128, 1024, 1024, 1024, 128, 1024,
                               1024])

  def test_benchmarks_needing_a_judge_are_skipped_without_one(self):
    with tempfile.TemporaryDirectory() as tmp:
      results = suite.run(SAMPLES, eval_fixtures.runner(lambda p, i: ["Yes"] * len(p), tmp),
                          None, only={"gqa", "mm-vet"})
    self.assertEqual(list(results), ["gqa", "mm-vet"])
    self.assertIn("skipped", results["mm-vet"])

  def test_a_killed_run_resumes_from_the_answer_journal(self):
    asked = []

    def dies_after_three(prompts, images):
      if len(asked) >= 3:
        raise KeyboardInterrupt
      asked.extend(prompts)
      return ["Yes"] * len(prompts)

    def steady(prompts, images):
      asked.extend(prompts)
      return ["Yes"] * len(prompts)

    with tempfile.TemporaryDirectory() as tmp:
      mme_dir = os.path.join(SAMPLES, "MME")
      with self.assertRaises(KeyboardInterrupt):
        suite.BENCHMARKS[6].run(mme_dir, eval_fixtures.runner(dies_after_three, tmp))
      first = list(asked)
      summary = suite.BENCHMARKS[6].run(mme_dir, eval_fixtures.runner(steady, tmp))
      records = answer_file.read_jsonl(os.path.join(tmp, "mme", "answers.jsonl"))
    # Batches of 2: 4 answers were journaled before the kill; the re-run asks the other 2.
    self.assertLen(first, 4)
    self.assertLen(asked, 6)
    self.assertEqual(set(asked), {r["prompt"] for r in records})
    self.assertLen(records, 6)
    self.assertEqual(summary["perception"], 100.0)
    # LLaVA's answer-file fields.
    self.assertContainsSubset({"question_id", "prompt", "text", "answer_id", "model_id",
                               "metadata", "category"}, records[0])

  def test_empty_root_is_an_error(self):
    with tempfile.TemporaryDirectory() as tmp:
      with self.assertRaisesRegex(ValueError, "none of the benchmark folders"):
        suite.run(tmp, eval_fixtures.runner(lambda p, i: [], tmp), None)


class CliTest(absltest.TestCase):

  def test_suite_through_a_server(self):
    with tempfile.TemporaryDirectory() as tmp, fake_openai.FakeOpenAI(judge_and_model) as server:
      result = subprocess.run(
          [sys.executable, "-m", "llava_jax.evaluate", "--suite=llava15",
           f"--data_root={SAMPLES}", f"--api_base={server.api_base}",
           f"--judge_api_base={server.api_base}", f"--out_dir={tmp}",
           "--api_key_env=LLAVA_JAX_TEST_UNSET_KEY"],
          cwd=REPO, capture_output=True, text=True, timeout=300)
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      with open(os.path.join(tmp, "llava15_results.json")) as f:
        saved = json.load(f)
      images_sent = sum(1 for r in server.requests for part in r["messages"][0]["content"]
                        if isinstance(part, dict) and part.get("type") == "image_url")
    self.assertIn(HEADER, result.stdout)
    self.assertIn("| server " + YES_ROW, result.stdout)
    self.assertAlmostEqual(saved["summary"]["pope"]["f1"], 200 / 3)
    self.assertGreater(images_sent, 30)
    self.assertIn("gqa", result.stderr)   # the per-benchmark progress bars

  def test_suite_in_process_from_a_checkpoint(self):
    with tempfile.TemporaryDirectory() as tmp:
      ckpt = tiny.write_model_dir(os.path.join(tmp, "model"))
      result = subprocess.run(
          [sys.executable, "-m", "llava_jax.evaluate", "--suite=llava15",
           f"--data_root={SAMPLES}", "--benchmarks=gqa", f"--ckpt={ckpt}",
           f"--out_dir={tmp}", "--judge_api_base="],
          cwd=REPO, capture_output=True, text=True, timeout=600,
          env=dict(os.environ, JAX_PLATFORMS="cpu"))
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      records = answer_file.read_jsonl(os.path.join(tmp, "gqa", "answers.jsonl"))
    self.assertLen(records, 3)
    self.assertTrue(all(isinstance(r["text"], str) for r in records))
    self.assertRegex(result.stdout, r"\| model \| - \| \d+\.\d \| - ")


if __name__ == "__main__":
  absltest.main()
