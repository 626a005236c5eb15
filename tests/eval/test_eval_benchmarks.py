"""GQA, POPE, MME, MMBench (circular), SEED-Bench and MM-Vet on their sample files, with
scores worked out by hand in the comments."""

import json
import os
import tempfile

from absl.testing import absltest

import eval_fixtures
import fake_openai
from llava_jax import openai_client as client_lib
from llava_jax.eval import gqa
from llava_jax.eval import mmbench
from llava_jax.eval import mme
from llava_jax.eval import mmvet
from llava_jax.eval import pope
from llava_jax.eval import seed

SAMPLES = eval_fixtures.SAMPLES


class GqaTest(absltest.TestCase):

  def test_exact_match_after_lowercasing_and_the_trailing_period(self):
    answer_fn = eval_fixtures.scripted({"left or right": "Left.", "dog": "yes",
                                        "vase": "the table"})
    with tempfile.TemporaryDirectory() as tmp:
      summary = gqa.run(os.path.join(SAMPLES, "gqa"), eval_fixtures.runner(answer_fn, tmp))
      with open(os.path.join(tmp, "gqa", "testdev_balanced_predictions.json")) as f:
        predictions = json.load(f)
    # "left" right; "yes" vs "no" wrong; "the table" vs "table" wrong (no article stripping).
    self.assertEqual((summary["correct"], summary["count"]), (1, 3))
    self.assertIn({"questionId": "201", "prediction": "left"}, predictions)


class PopeTest(absltest.TestCase):

  def test_metrics_per_split(self):
    answer_fn = eval_fixtures.scripted({
        "a dog": "Yes, there is a dog.",              # adversarial: yes/yes TP; random: TP
        "a car": "No.",                               # yes label, said no: FN
        "a cat": "There is not a cat in the image.",  # "not": no; label no: TN
        "a bus": "Yes",                               # label no: FP
        "a kite": "No, there is none."})              # random: TN
    with tempfile.TemporaryDirectory() as tmp:
      summary = pope.run(os.path.join(SAMPLES, "pope"), eval_fixtures.runner(answer_fn, tmp))
    self.assertEqual(summary["adversarial"], {"accuracy": 50.0, "precision": 50.0,
                                              "recall": 50.0, "f1": 50.0, "yes_ratio": 50.0,
                                              "count": 4})
    self.assertEqual(summary["random"], {"accuracy": 100.0, "precision": 100.0,
                                         "recall": 100.0, "f1": 100.0, "yes_ratio": 50.0,
                                         "count": 2})
    self.assertEqual(summary["f1"], 75.0)

  def test_first_sentence_decides(self):
    self.assertTrue(pope.says_no("No, there is none."))
    self.assertFalse(pope.says_no("Yes. No other objects."))
    self.assertFalse(pope.says_no("Nope"))   # not the word "no": LLaVA's rule reads yes


class MmeTest(absltest.TestCase):

  def test_acc_and_acc_plus_per_subtask_and_the_totals(self):
    answer_fn = eval_fixtures.scripted({
        "a bus": "Yes", "a cow": "No",                      # existence: 2/2, image right
        "Giotto": "Yes", "Monet": "Yes, it is",             # artwork: 1/2, image wrong
        "print 3": "yes", "print 5": "Sure"})               # code: "Sure" is neither: wrong
    with tempfile.TemporaryDirectory() as tmp:
      summary = mme.run(os.path.join(SAMPLES, "MME"), eval_fixtures.runner(answer_fn, tmp))
    self.assertEqual(summary["existence"]["score"], 200.0)
    self.assertEqual((summary["artwork"]["acc"], summary["artwork"]["acc_plus"]), (50.0, 0.0))
    self.assertEqual(summary["code_reasoning"]["score"], 50.0)
    self.assertEqual(summary["perception"], 250.0)   # existence + artwork
    self.assertEqual(summary["cognition"], 50.0)

  def test_answer_parsing(self):
    self.assertEqual(mme.parse_answer(" YES "), "yes")
    self.assertEqual(mme.parse_answer("No, it is not."), "no")
    self.assertEqual(mme.parse_answer("I think yes"), "other")   # only the first 4 characters


class MmbenchTest(absltest.TestCase):

  def test_prompt_is_llavas(self):
    row = mmbench.read_tsv(os.path.join(SAMPLES, "mmbench", "mmbench_dev_20230712.tsv"))[0]
    self.assertEqual(mmbench.prompt(row, mmbench.rounds(row)[1], "en"),
                     "The picture was taken at a farm.\nWhich animal is shown?\n"
                     "A. cat\nB. cow\nC. dog\n"
                     "Answer with the option's letter from the given choices directly.")

  def test_circular_rule_needs_every_rotation_right(self):
    picks_right = {0: eval_fixtures.picks_option("cat"), 1: eval_fixtures.picks_option("left")}

    def answer_fn(prompts, images):
      # Right in every round, except question 1's last rotation (options start with "bottom").
      out = []
      for p, image in zip(prompts, images):
        which = 0 if "animal" in p else 1
        out.append("A" if "A. bottom" in p else picks_right[which]([p], [image])[0])
      return out

    calls = []
    counting = lambda p, i: calls.extend(p) or answer_fn(p, i)
    with tempfile.TemporaryDirectory() as tmp:
      summary = mmbench.run(os.path.join(SAMPLES, "mmbench"),
                            eval_fixtures.runner(counting, tmp), bench="mmbench", lang="en")
      import openpyxl
      sheet = openpyxl.load_workbook(summary["mmbench_test_en_20231003"]["submission"]).active
      upload = [[c.value for c in row] for row in sheet.iter_rows()]
    dev = summary["mmbench_dev_20230712"]
    # Question 0 (3 options) right in all 3 rounds; question 1 wrong in round 4 of 4.
    self.assertEqual((dev["all"]["correct"], dev["all"]["count"]), (1, 2))
    self.assertEqual(dev["category:attribute_recognition"]["accuracy"], 100.0)
    self.assertEqual(dev["category:object_localization"]["accuracy"], 0.0)
    self.assertLen(calls, 3 + 4 + 2)   # + the test question's 2 rounds
    # The server's upload: LLaVA's columns, 'prediction' inserted after the options.
    self.assertEqual(upload[0], ["index", "question", "A", "B", "C", "D", "prediction", "split"])
    self.assertEqual(upload[1][:2] + upload[1][6:7], ["7", "What color is the square?", "Z"])

  def test_chinese_instruction(self):
    calls = []
    answer_fn = eval_fixtures.scripted({"蓝色": "B"}, calls=calls)
    with tempfile.TemporaryDirectory() as tmp:
      summary = mmbench.run(os.path.join(SAMPLES, "mmbench_cn"),
                            eval_fixtures.runner(answer_fn, tmp), bench="mmbench_cn", lang="cn")
    self.assertTrue(all(p.endswith("\n请直接回答选项字母。") for p, _ in calls))
    # Round 2 puts 蓝色 at A, but the scripted model still says B: circularly wrong.
    self.assertEqual(summary["mmbench_dev_cn_20231003"]["all"]["correct"], 0)

  def test_missing_field_is_named(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "bad.tsv")
      with open(path, "w") as f:
        f.write("index\tquestion\tA\tB\timage\n3\tWhy?\tx\t\timg\n")
      with self.assertRaisesRegex(ValueError, "bad.tsv: line 2: missing field 'B'"):
        mmbench.read_tsv(path)


class SeedTest(absltest.TestCase):

  def test_accuracy_per_dimension(self):
    answer_fn = eval_fixtures.scripted({"main feature": "A", "holding": "B",
                                        "person doing": "(B)"})
    with tempfile.TemporaryDirectory() as tmp:
      summary = seed.run(os.path.join(SAMPLES, "seed_bench"),
                         eval_fixtures.runner(answer_fn, tmp))
      with open(summary["submission"]) as f:
        upload = [json.loads(line) for line in f]
    accuracy = {k: v["accuracy"] for k, v in summary.items() if isinstance(v, dict)}
    self.assertAlmostEqual(accuracy.pop("all"), 200 / 3)
    self.assertEqual(accuracy, {"image": 50.0, "video": 100.0, "Scene Understanding": 100.0,
                                "Instance Identity": 0.0, "Action Recognition": 100.0})
    self.assertIn({"question_id": "v201", "prediction": "(B)"}, upload)


class MmvetTest(absltest.TestCase):

  def test_judge_grades_are_averaged_per_capability_and_journaled(self):
    def judge_reply(request):
      prompt = request["messages"][0]["content"]
      return "0.5" if prompt.endswith("What is x in the equation? | -1 <AND> -5 | x = -1 |") \
          else "Score: 1.0"

    answer_fn = eval_fixtures.scripted({"equation": "x = -1", "animal": "A cat."})
    with tempfile.TemporaryDirectory() as tmp, fake_openai.FakeOpenAI(judge_reply) as server:
      judge = client_lib.ChatClient(api_base=server.api_base, model="judge")
      summary = mmvet.run(os.path.join(SAMPLES, "mm-vet"),
                          eval_fixtures.runner(answer_fn, tmp), judge)
      again = mmvet.run(os.path.join(SAMPLES, "mm-vet"),
                        eval_fixtures.runner(answer_fn, tmp), judge)
      with open(os.path.join(tmp, "mmvet", "results.json")) as f:
        results = json.load(f)
      requests = len(server.requests)
    scores = {k: v["score"] for k, v in summary.items() if isinstance(v, dict)}
    self.assertEqual(scores, {"total": 75.0, "ocr": 50.0, "math": 50.0, "math+ocr": 50.0,
                              "rec": 100.0})
    self.assertEqual(summary["ungraded"], 0)
    self.assertEqual(again, summary)
    self.assertEqual(requests, 2)   # the re-run reused both grades
    self.assertEqual(results, {"v1_0": "x = -1", "v1_1": "A cat."})

  def test_parse_grade(self):
    self.assertEqual(mmvet.parse_grade("0.7"), 0.7)
    self.assertEqual(mmvet.parse_grade("The score is 1.0."), 1.0)
    self.assertIsNone(mmvet.parse_grade("10"))
    self.assertIsNone(mmvet.parse_grade("I cannot grade this."))


if __name__ == "__main__":
  absltest.main()
