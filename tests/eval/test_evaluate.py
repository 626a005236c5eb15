"""Tests for llava_jax.evaluate and llava_jax.eval (scienceqa, llava_bench, text ROUGE-L)."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

import fake_openai
from llava_jax import openai_client as client_lib
from llava_jax.datagen import flan
from llava_jax.eval import answering
from llava_jax.eval import llava_bench
from llava_jax.eval import scienceqa
from llava_jax.eval import text_rouge
import tiny

REPO = str(tiny.REPO)
SAMPLES = os.path.join(REPO, "data", "eval_samples")


def fake_model(answers_by_substring: dict[str, str], calls: list | None = None):
  """An AnswerFn answering each prompt by the first key it contains."""

  def answer(prompts, images):
    if calls is not None:
      calls.append((list(prompts), list(images)))
    return [next((a for k, a in answers_by_substring.items() if k in p), "no idea")
            for p in prompts]

  return answer


class ScienceQATest(parameterized.TestCase):

  def test_prompt_format(self):
    problem = scienceqa.load(os.path.join(SAMPLES, "scienceqa.jsonl"))[1]
    self.assertEqual(scienceqa.prompt(problem),
                     "Context: Look at the shapes on the black background.\n"
                     "Which shape is on the right of the image?\n"
                     "A. a green circle\nB. a blue square\n"
                     "Answer with the option's letter from the given choices directly.")
    no_context = scienceqa.load(os.path.join(SAMPLES, "scienceqa.jsonl"))[0]
    self.assertTrue(scienceqa.prompt(no_context).startswith("How many circles"))

  @parameterized.parameters(
      ("B", "B"), ("B.", "B"), ("(C)", "C"), ("B. three", "B"), ("C) four", "C"),
      ("The answer is A.", "A"), ("the answer is (C)", "C"), ("three", "B"), ("Three.", "B"),
      ("D", None), ("A cat.", None), ("I don't know", None), ("", None))
  def test_extract_letter(self, text, letter):
    self.assertEqual(scienceqa.extract_letter(text, ("two", "three", "four")), letter)

  def test_accuracy_per_subject_context_and_grade(self):
    calls = []
    answer_fn = fake_model({
        "How many circles": "B",                     # sqa-1 correct (IMG, NAT, G1-6)
        "on the right": "The answer is B.",          # sqa-2 correct (TXT+IMG, NAT, G1-6)
        "dictionary": "A. army",                     # sqa-3 correct (NO, LAN, G1-6)
        "tense": "A",                                # sqa-4 wrong (TXT, LAN, G1-6)
        "capital of France": "I am not sure.",       # sqa-5 unparsed (NO, SOC, G7-12)
        "main force": "gravity",                     # sqa-6 correct (TXT, NAT, G7-12)
    }, calls)
    summary, items = scienceqa.evaluate(
        scienceqa.load(os.path.join(SAMPLES, "scienceqa.jsonl")), answer_fn,
        image_dir=SAMPLES, batch_size=4, progress=False)
    accuracy = {k: (v["correct"], v["count"]) for k, v in summary.items() if isinstance(v, dict)}
    self.assertEqual(accuracy, {
        "all": (4, 6), "subject:NAT": (3, 3), "subject:SOC": (0, 1), "subject:LAN": (1, 2),
        "context:TXT": (2, 3), "context:IMG": (2, 2), "context:NO": (1, 2),
        "grade:G1-6": (3, 4), "grade:G7-12": (1, 2)})
    self.assertAlmostEqual(summary["all"]["accuracy"], 400 / 6)
    self.assertEqual(summary["unparsed"], 1)
    self.assertEqual([it["parsed"] for it in items], ["B", "B", "A", "A", None, "C"])
    # Batched: 6 prompts in batches of 4 and 2; image paths resolve to the shipped demo images.
    self.assertEqual([len(p) for p, _ in calls], [4, 2])
    images = calls[0][1]
    self.assertTrue(os.path.isfile(images[0]) and os.path.isfile(images[1]))
    self.assertEqual(images[2:], [None, None])
    self.assertIn("subject:NAT", scienceqa.table(summary))

  def test_problems_json_layout_with_split(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "problems.json")
      with open(path, "w") as f:
        json.dump({"7": {"question": "q?", "choices": ["a", "b"], "answer": 1, "hint": "",
                         "image": "image.png", "split": "test", "subject": "social science",
                         "grade": "grade10"},
                   "8": {"question": "r?", "choices": ["a", "b"], "answer": 0, "hint": "h",
                         "image": None, "split": "train"}}, f)
      (problem,) = scienceqa.load(path, split="test")
      self.assertEqual((problem.id, problem.image, problem.contexts), ("7", "7/image.png",
                                                                       ["IMG"]))
      with open(path, "w") as f:
        json.dump({"9": {"question": "q?", "choices": ["a", "b"], "answer": 2}}, f)
      with self.assertRaisesRegex(ValueError, r"problems\.json: problem 9: field 'answer'"):
        scienceqa.load(path)


def judge_response(name: str) -> str:
  with open(os.path.join(SAMPLES, "judge_responses", f"{name}.json")) as f:
    return json.load(f)["choices"][0]["message"]["content"]


class LlavaBenchTest(parameterized.TestCase):

  @parameterized.parameters(
      ("plain_pair", (8.0, 6.0)), ("comma_decimal", (9.0, 7.5)),
      ("per_assistant_lines", (9.0, 4.0)), ("scores_label", (7.0, 7.0)),
      ("ten_and_one", (10.0, 1.0)), ("no_scores", None), ("three_numbers", None))
  def test_parse_saved_judge_responses(self, name, expected):
    self.assertEqual(llava_bench.parse_scores(judge_response(name)), expected)

  def test_relative_score_per_category(self):
    reviews = {"What color": judge_response("plain_pair"),          # conv 8 vs 6
               "Describe the image": judge_response("comma_decimal"),  # detail 9 vs 7.5
               "green shapes were removed": judge_response("no_scores")}  # complex: unscored

    def judge_reply(request):
      content = request["messages"][-1]["content"]
      return next(r for k, r in reviews.items() if k in content)

    questions = llava_bench.load(os.path.join(SAMPLES, "llava_bench.jsonl"))
    with fake_openai.FakeOpenAI(judge_reply) as server:
      judge = client_lib.ChatClient(api_base=server.api_base, model="judge")
      summary, items = llava_bench.evaluate(
          questions, fake_model({"color": "They are purple."}), judge, image_dir=SAMPLES,
          progress=False)
    self.assertAlmostEqual(summary["conv"]["relative"], 75.0)
    self.assertAlmostEqual(summary["detail"]["relative"], 7.5 / 9 * 100)
    self.assertNotIn("complex", summary)
    self.assertAlmostEqual(summary["all"]["relative"], (6 + 7.5) / 2 / ((8 + 9) / 2) * 100)
    self.assertEqual(summary["unscored"], 1)
    self.assertEqual(items[0]["scores"], (8.0, 6.0))
    # The judge sees context, question, the reference as Assistant 1 and ours as Assistant 2.
    first = next(r for r in server.requests if "What color" in r["messages"][-1]["content"])
    prompt = first["messages"][-1]["content"]
    self.assertIn("[Context]\nThree purple circles on a plain black background.\nOne circle",
                  prompt)
    self.assertIn("[Assistant 1]\nAll of the shapes are purple.\n\n[End of Assistant 1]", prompt)
    self.assertIn("[Assistant 2]\nThey are purple.\n\n[End of Assistant 2]", prompt)
    self.assertIn("conv", llava_bench.table(summary))

  def test_judge_reviews_are_reused_on_a_rerun(self):
    questions = llava_bench.load(os.path.join(SAMPLES, "llava_bench.jsonl"))
    with tempfile.TemporaryDirectory() as tmp, \
        fake_openai.FakeOpenAI(lambda r: "8 6", fail_first=[400]) as server:
      judge = client_lib.ChatClient(api_base=server.api_base, model="judge")
      reviews = os.path.join(tmp, "reviews.jsonl")
      run = lambda answers: llava_bench.evaluate(
          questions, fake_model(answers), judge, image_dir=SAMPLES, judge_concurrency=1,
          reviews_path=reviews, progress=False)
      self.assertEqual(run({})[0]["unscored"], 1)  # The first review failed (HTTP 400).
      self.assertLen(server.requests, 3)
      summary, _ = run({})
      self.assertEqual(summary["all"]["count"], 3)
      self.assertLen(server.requests, 4)  # Only the failed review is asked again.
      run({"color": "A different answer."})
      self.assertLen(server.requests, 5)  # A changed answer needs a new review.

  def test_judge_failures_are_counted_not_fatal(self):
    questions = llava_bench.load(os.path.join(SAMPLES, "llava_bench.jsonl"))
    with fake_openai.FakeOpenAI(lambda r: "8 8", fail_first=[400]) as server:
      judge = client_lib.ChatClient(api_base=server.api_base, model="judge")
      summary, items = llava_bench.evaluate(questions, fake_model({}), judge,
                                            image_dir=SAMPLES, judge_concurrency=1,
                                            progress=False)
    self.assertEqual(summary["unscored"], 1)
    self.assertIn("HTTP 400", items[0]["judge_error"])
    self.assertEqual(summary["all"]["count"], 2)


class TextRougeTest(absltest.TestCase):

  def test_rouge_l(self):
    self.assertAlmostEqual(text_rouge.rouge_l("the cat sat", ["the cat sat"]), 100.0)
    # LCS "cat sat" = 2 tokens; P = 2/3, R = 2/4 → F = 4/7.
    self.assertAlmostEqual(text_rouge.rouge_l("a cat sat", ["the cat sat down"]), 400 / 7)
    self.assertAlmostEqual(text_rouge.rouge_l("dogs", ["cat", "dog"]), 100.0)  # Stemmed; max.
    self.assertEqual(text_rouge.rouge_l("", ["cat"]), 0.0)
    # Non-ASCII words stay whole (rouge-score's default tokenizer would split "für").
    self.assertAlmostEqual(text_rouge.rouge_l("danke für alles", ["danke für nichts"]), 200 / 3)

  def test_evaluate_per_task(self):
    examples = text_rouge.load(os.path.join(SAMPLES, "text.jsonl"))
    self.assertEqual(examples[3]["prompt"], "Summarize the text in one sentence.\n\nThe town "
                     "council met on Monday and voted to build a new library next to the park. "
                     "Construction will start in spring and should take two years.")
    answer_fn = fake_model({"Premise": "yes", "bakery": "two in the afternoon",
                            "German": "Die Katze schläft.", "Summarize": "no"})
    summary, items = text_rouge.evaluate(examples, answer_fn, batch_size=3, progress=False)
    # "Die Katze schläft" vs "Die Katze schläft auf dem Sofa": P = 1, R = 1/2 → F = 2/3.
    self.assertEqual([round(it["rougeL"], 1) for it in items], [100.0, 100.0, 66.7, 0.0])
    self.assertEqual(summary["task:nli"]["exact_match"], 100.0)
    self.assertAlmostEqual(summary["all"]["rougeL"], 200 / 3)
    self.assertEqual(list(summary)[0], "all")

  def test_reads_text_only_llava_records(self):
    records = list(flan.to_records("nli", [{"premise": "p.", "hypothesis": "h.", "label": 2}]))
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "nli.json")
      with open(path, "w") as f:
        json.dump(records, f)
      (example,) = text_rouge.load(path)
    self.assertEqual(example["references"], ["no"])
    self.assertEqual(example["task"], "nli")
    self.assertIn("OPTIONS:", example["prompt"])


class AnsweringTest(absltest.TestCase):

  def test_server_answer_fn_keeps_order_and_sends_images(self):
    def reply(request):
      content = request["messages"][0]["content"]
      text = next(part["text"] for part in content if part["type"] == "text")
      has_image = any(part["type"] == "image_url" for part in content)
      return f"{text}:{'img' if has_image else 'txt'}"

    image = os.path.join(REPO, "data", "demo", "images", "shapes_000.png")
    with fake_openai.FakeOpenAI(reply, delay_s=0.02) as server:
      fn = answering.server_answer_fn(client_lib.ChatClient(api_base=server.api_base,
                                                            model="m"), concurrency=3)
      answers = answering.answer_all([str(i) for i in range(7)],
                                     [image if i % 2 else None for i in range(7)], fn,
                                     batch_size=4, progress=False)
    self.assertEqual(answers, [f"{i}:{'img' if i % 2 else 'txt'}" for i in range(7)])
    data_urls = [p["image_url"]["url"] for r in server.requests
                 for p in r["messages"][0]["content"] if p["type"] == "image_url"]
    self.assertLen(data_urls, 3)
    self.assertTrue(all(u.startswith("data:image/png;base64,") for u in data_urls))

  def test_cli_against_a_server(self):
    with tempfile.TemporaryDirectory() as tmp, \
        fake_openai.FakeOpenAI(lambda r: "B") as server:
      out = os.path.join(tmp, "sqa.json")
      result = subprocess.run(
          [sys.executable, "-m", "llava_jax.evaluate", "--task=scienceqa",
           f"--data={os.path.join(SAMPLES, 'scienceqa.jsonl')}", f"--api_base={server.api_base}",
           f"--out={out}", "--batch_size=3"], cwd=REPO, capture_output=True, text=True,
          timeout=120)
      self.assertEqual(result.returncode, 0, result.stderr[-2000:])
      with open(out) as f:
        saved = json.load(f)
    self.assertEqual(saved["task"], "scienceqa")
    # "B" is right for sqa-1, sqa-2 and sqa-5.
    self.assertEqual((saved["summary"]["all"]["correct"], saved["summary"]["all"]["count"]),
                     (3, 6))
    self.assertLen(saved["items"], 6)
    self.assertRegex(result.stdout, r"all\s+50\.0\s+3\s+6")
    self.assertLen(server.requests, 6)

  def test_llava_bench_cli_with_a_judge(self):
    def reply(request):  # One server plays both the model and the judge.
      judged = request["messages"][0]["content"] == llava_bench.JUDGE_SYSTEM
      return "9 6\nReasons." if judged else "Purple."

    with tempfile.TemporaryDirectory() as tmp, fake_openai.FakeOpenAI(reply) as server:
      out = os.path.join(tmp, "bench.json")
      result = subprocess.run(
          [sys.executable, "-m", "llava_jax.evaluate", "--task=llava_bench",
           f"--data={os.path.join(SAMPLES, 'llava_bench.jsonl')}",
           f"--api_base={server.api_base}", f"--judge_api_base={server.api_base}",
           f"--out={out}", "--api_key_env=LLAVA_JAX_TEST_UNSET_KEY"],
          cwd=REPO, capture_output=True, text=True, timeout=120)
      self.assertEqual(result.returncode, 0, result.stderr[-2000:])
      with open(out) as f:
        summary = json.load(f)["summary"]
      self.assertTrue(os.path.exists(out + ".reviews.jsonl"))
    self.assertAlmostEqual(summary["all"]["relative"], 6 / 9 * 100)
    self.assertEqual({k: v["count"] for k, v in summary.items() if isinstance(v, dict)},
                     {"all": 3, "conv": 1, "detail": 1, "complex": 1})
    self.assertRegex(result.stdout, r"all\s+66\.7")


class CheckpointTest(absltest.TestCase):

  def test_cli_generates_in_process_from_a_checkpoint(self):
    """`--ckpt`: batched generation with a tiny random model; its answers are nonsense, so
    the point is that they are extracted, counted and scored without a crash."""
    with tempfile.TemporaryDirectory() as tmp:
      ckpt = tiny.write_model_dir(os.path.join(tmp, "model"))
      out = os.path.join(tmp, "sqa.json")
      result = subprocess.run(
          [sys.executable, "-m", "llava_jax.evaluate", "--task=scienceqa",
           f"--data={os.path.join(SAMPLES, 'scienceqa.jsonl')}", f"--ckpt={ckpt}",
           f"--out={out}", "--batch_size=8", "--max_new_tokens=6"],
          cwd=REPO, capture_output=True, text=True, timeout=600,
          env=dict(os.environ, JAX_PLATFORMS="cpu"))
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      with open(out) as f:
        saved = json.load(f)
    summary = saved["summary"]
    self.assertEqual(summary["all"]["count"], 6)
    self.assertEqual(summary["context:IMG"]["count"], 2)
    parsed = [item["parsed"] for item in saved["items"]]
    self.assertEqual(summary["unparsed"], parsed.count(None))
    self.assertEqual(summary["all"]["correct"],
                     sum(item["parsed"] == item["target"] for item in saved["items"]))
    self.assertTrue(all(isinstance(item["answer"], str) for item in saved["items"]))
    self.assertIn("ScienceQA", result.stdout)


if __name__ == "__main__":
  absltest.main()
