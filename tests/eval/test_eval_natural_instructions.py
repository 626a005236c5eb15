"""Super-NaturalInstructions reading, Tk-Instruct encodings and scores; FLAN held-out tasks."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

import eval_fixtures
import fake_openai
from llava_jax.eval import flan_heldout
from llava_jax.eval import natural_instructions as ni

NI_DIR = os.path.join(eval_fixtures.SAMPLES, "natural_instructions")
FLAN_INPUTS = os.path.join(eval_fixtures.REPO, "data", "datagen_samples", "text")
STORY = "Story: The cat sat on the mat. Question: What did the cat do?"


class EncodingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tasks = {t.name: t for t in ni.read_split(NI_DIR, "test")}
    self.qa = self.tasks["task002_sample_answer_question"]

  def test_split_lists_and_task_fields(self):
    self.assertEqual(list(self.tasks), ["task002_sample_answer_question",
                                        "task003_sample_sentiment"])
    self.assertLen(self.qa.positives, 3)
    self.assertEqual(self.qa.categories, ("Question Answering",))
    self.assertEqual(self.qa.instances[1]["output"], ["yes", "Yes, she did"])

  def test_definition_only(self):
    task = ni.read_split(NI_DIR, "train")[0]
    self.assertEqual(ni.encode(task, "I like tea", "def"),
                     "Definition: Repeat the last word of the sentence.\n\n"
                     "Now complete the following example -\nInput: I like tea.\nOutput: ")

  def test_definition_and_two_positive_examples(self):
    self.assertEqual(ni.encode(self.qa, STORY, "def_pos2"),
                     "Definition: Answer the question about the story in a short phrase.\n\n"
                     " Positive Example 1 -\n"
                     "Input: Story: Tom fed the cat. Question: Who fed the cat?\n Output: Tom.\n\n"
                     " Positive Example 2 -\n"
                     "Input: Story: It rained all day. Question: What was the weather?\n"
                     " Output: rainy.\n\n"
                     f"Now complete the following example -\nInput: {STORY}\nOutput: ")

  def test_negative_examples_and_explanations(self):
    text = ni.encode(self.qa, STORY, "def_pos2_neg2_expl")
    self.assertIn(" Output: Tom.\n Explanation: Tom is the one who fed it.\n\n", text)
    self.assertIn(" Output: rainy.\n Explanation: The story says it rained.\n\n", text)
    self.assertIn(" Negative Example 1 -\nInput: Story: Tom fed the cat. Question: Who fed the "
                  "cat?\n Output: the cat.\n Explanation: The cat was fed; it did not feed.\n\n"
                  "Now complete", text)
    self.assertNotIn("Positive Example 3", text)

  def test_training_records_come_from_the_train_tasks(self):
    records = ni.training_records(ni.read_split(NI_DIR, "train"), "def")
    self.assertEqual(records, [{"id": "task001_sample_copy_word-task001-1", "conversations": [
        {"from": "human", "value": ni.encode(ni.read_split(NI_DIR, "train")[0], "I like tea",
                                             "def")},
        {"from": "gpt", "value": "tea"}]}])

  def test_bad_task_file_is_named(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "task9_bad.json")
      with open(path, "w") as f:
        json.dump({"Definition": ["Do it."], "Instances": [{"input": "x", "output": "y"}]}, f)
      with self.assertRaisesRegex(ValueError, r"task9_bad.json: Instances\[0\]: needs"):
        ni.read_task(path)


class ScoreTest(absltest.TestCase):

  def test_rouge_and_exact_match_per_task_category_and_overall(self):
    answer_fn = eval_fixtures.scripted({"What did the cat do?": "the cat sat",
                                        "Did Ann win?": "Yes.", "Boring": "positive"})
    with tempfile.TemporaryDirectory() as tmp:
      summary, items = ni.evaluate(NI_DIR, eval_fixtures.runner(answer_fn, tmp))
    # "the cat sat" vs "a cat sat down": LCS 2, P 2/3, R 1/2, F 4/7. "Yes." = "yes": 100, exact.
    self.assertAlmostEqual(items[0]["rougeL"], 400 / 7)
    self.assertFalse(items[0]["exact_match"])
    qa = summary["task:task002_sample_answer_question"]
    self.assertAlmostEqual(qa["rougeL"], (400 / 7 + 100) / 2)
    self.assertEqual(qa["exact_match"], 50.0)
    self.assertEqual(summary["category:Question Answering"], qa)
    self.assertEqual(summary["category:Sentiment Analysis"]["rougeL"], 0.0)
    self.assertAlmostEqual(summary["all"]["rougeL"], (400 / 7 + 100) / 3)
    self.assertAlmostEqual(summary["all"]["exact_match"], 100 / 3)

  def test_exact_match_normalization(self):
    self.assertEqual(ni.normalize_answer("The  Answer, is: A cat!"), "answer is cat")


class FlanHeldoutTest(absltest.TestCase):

  def test_the_heldout_task_never_enters_training(self):
    train, examples = flan_heldout.split(FLAN_INPUTS, "nli")
    with open(os.path.join(FLAN_INPUTS, "nli.jsonl")) as f:
      nli_lines = sum(1 for line in f if line.strip())
    self.assertTrue(train and examples)
    self.assertFalse([r for r in train if r["id"].startswith("nli-")])
    self.assertEqual({r["id"].split("-")[0] for r in train}, {"sentiment", "qa", "translation"})
    self.assertLessEqual(len(examples), nli_lines)
    self.assertEqual({e["task"] for e in examples}, {"nli"})

  def test_scores_on_the_heldout_task(self):
    _, examples = flan_heldout.split(FLAN_INPUTS, "sentiment")
    # Every answer is its reference except the first one's.
    answers = {e["prompt"]: (e["references"][0] if k else "no idea at all")
               for k, e in enumerate(examples)}
    with tempfile.TemporaryDirectory() as tmp:
      summary, _ = ni.evaluate_text("flan", examples, eval_fixtures.runner(
          lambda p, i: [answers[x] for x in p], tmp))
    n = len(examples)
    self.assertAlmostEqual(summary["all"]["exact_match"], 100 * (n - 1) / n)
    self.assertEqual(summary["task:sentiment"]["count"], n)

  def test_unknown_or_missing_task_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "unknown held-out task"):
      flan_heldout.split(FLAN_INPUTS, "poetry")


class CliTest(absltest.TestCase):

  def test_write_train_then_evaluate_through_a_server(self):
    with tempfile.TemporaryDirectory() as tmp, fake_openai.FakeOpenAI(lambda r: "yes") as server:
      train = os.path.join(tmp, "ni_train.json")
      run = lambda *flags: subprocess.run(
          [sys.executable, "-m", "llava_jax.evaluate", "--task=natural_instructions",
           f"--data={NI_DIR}", f"--out_dir={tmp}", *flags], cwd=eval_fixtures.REPO,
          capture_output=True, text=True, timeout=300)
      written = run(f"--write_train={train}", "--encoding=def_pos2_neg2_expl")
      self.assertEqual(written.returncode, 0, written.stderr[-2000:])
      with open(train) as f:
        records = json.load(f)
      evaluated = run(f"--api_base={server.api_base}")
      self.assertEqual(evaluated.returncode, 0, evaluated.stderr[-2000:])
      with open(os.path.join(tmp, "natural_instructions_def_pos2_results.json")) as f:
        saved = json.load(f)
    self.assertLen(records, 1)
    self.assertIn("Negative Example 1", records[0]["conversations"][0]["value"])
    self.assertLen(server.requests, 3)
    # "yes" is exact for task002-2 only.
    self.assertAlmostEqual(saved["summary"]["all"]["exact_match"], 100 / 3)
    self.assertRegex(evaluated.stdout, r"all\s+33\.3\s+33\.3\s+3")


if __name__ == "__main__":
  absltest.main()
