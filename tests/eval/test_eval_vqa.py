"""VQA normalization and accuracy; VQAv2, VizWiz and TextVQA on their sample files."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

import eval_fixtures
from llava_jax.eval import vqa
from llava_jax.eval import vqa_answers

SAMPLES = eval_fixtures.SAMPLES


class NormalizeTest(parameterized.TestCase):

  @parameterized.parameters(
      ("Yes!", "yes"),                        # trailing punctuation deleted
      ("hot-dog", "hot dog"),                 # inner punctuation becomes a space
      ("yes, it is", "yes it is"),            # ", " touches a space: deleted
      ("1,000", "1000"),                      # digit-comma-digit: commas deleted
      ("3.5", "3.5"),                         # a decimal point stays
      ("e.g.", "eg"),                         # other periods go
      ("Two", "2"), ("none", "0"), ("ten", "10"),   # number words
      ("an apple", "apple"), ("The Dog", "dog"),    # articles dropped
      ("dont", "don't"), ("isnt", "isn't"), ("couldnt've", "couldn't've"),  # contractions
      ("can't", "can't"),                     # an apostrophe is not punctuation
      ("Let's go.", "let's go"),
      ("red\tand\nblue", "red and blue"),
      ("left/right", "left right"))
  def test_normalize(self, raw, normalized):
    self.assertEqual(vqa_answers.normalize(raw), normalized)

  def test_accuracy_is_the_mean_over_leave_one_out_subsets(self):
    # 3 of 10 humans agree: leaving one of them out gives 2/3, leaving another out gives 1.
    self.assertAlmostEqual(vqa_answers.accuracy("2", ["2"] * 3 + ["3"] * 7), 0.9)
    # 1 of 10: 0 when it is left out, 1/3 otherwise.
    self.assertAlmostEqual(vqa_answers.accuracy("red", ["red"] + ["blue"] * 9), 0.3)
    # 2 of 10: (2 * 1/3 + 8 * 2/3) / 10.
    self.assertAlmostEqual(vqa_answers.accuracy("x", ["x", "x"] + ["y"] * 8), 0.6)
    self.assertAlmostEqual(vqa_answers.accuracy("x", ["x"] * 4 + ["y"] * 6), 1.0)
    self.assertEqual(vqa_answers.accuracy("x", ["y"] * 10), 0.0)
    # Humans are normalized too: "Two" and "2." match "two".
    self.assertAlmostEqual(vqa_answers.accuracy("two", ["Two", "2.", "2"] + ["3"] * 7), 0.9)

  def test_no_humans_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "no human answers"):
      vqa_answers.accuracy("x", [])


class BenchmarksTest(absltest.TestCase):

  def test_vqav2_scores_annotated_questions_and_writes_the_full_test_submission(self):
    answer_fn = eval_fixtures.scripted({"How many dogs": "Two.", "color is the car": "Red",
                                        "man saying": "dont know"})
    with tempfile.TemporaryDirectory() as tmp:
      summary = vqa.run_vqav2(os.path.join(SAMPLES, "vqav2"),
                              eval_fixtures.runner(answer_fn, tmp))
      with open(summary["submission"]) as f:
        upload = json.load(f)
    # 0.9 ("two" = 3 of 10 humans), 0.3 (1 of 10), 1.0 ("dont" = "don't", 4 of 10).
    self.assertAlmostEqual(summary["accuracy"], 100 * (0.9 + 0.3 + 1.0) / 3)
    self.assertEqual(summary["count"], 3)
    # EvalAI's format; question 4 of the test split was never asked: answered "".
    self.assertEqual(upload, [{"question_id": 1, "answer": "2"},
                              {"question_id": 2, "answer": "red"},
                              {"question_id": 3, "answer": "don't know"},
                              {"question_id": 4, "answer": ""}])

  def test_vizwiz(self):
    answer_fn = eval_fixtures.scripted({"What is this?": "Unanswerable",
                                        "in the cup": "Coffee."})
    with tempfile.TemporaryDirectory() as tmp:
      summary = vqa.run_vizwiz(os.path.join(SAMPLES, "vizwiz"),
                               eval_fixtures.runner(answer_fn, tmp))
      with open(summary["submission"]) as f:
        upload = json.load(f)
    self.assertAlmostEqual(summary["accuracy"], 100 * (1.0 + 0.6) / 2)
    self.assertEqual(upload, [{"image": "VizWiz_val_00000001.jpg", "answer": "unanswerable"},
                              {"image": "VizWiz_val_00000002.jpg", "answer": "coffee"}])

  def test_textvqa_matches_by_image_and_question_line(self):
    calls = []
    answer_fn = eval_fixtures.scripted({"brand": "Nikon", "model name": "canon"}, calls=calls)
    with tempfile.TemporaryDirectory() as tmp:
      summary = vqa.run_textvqa(os.path.join(SAMPLES, "textvqa"),
                                eval_fixtures.runner(answer_fn, tmp))
    self.assertEqual(summary, {"accuracy": 50.0, "count": 2})
    # Both questions share an image id and both were asked.
    self.assertLen(calls, 2)
    self.assertTrue(calls[0][0].endswith("Answer the question using a single word or phrase."))
    self.assertTrue(calls[0][1].endswith("train_images/003a8ae2ef43b901.jpg"))

  def test_textvqa_question_line(self):
    self.assertEqual(vqa.textvqa_question("What?\nReference OCR token: a, b\nAnswer it."),
                     "what?")
    self.assertEqual(vqa.textvqa_question("Reference OCR token: a\nWhat?\nAnswer it."), "what?")
    self.assertEqual(vqa.textvqa_question("OCR tokens: a, b Question: What is it? Short answer:"),
                     "what is it?")

  def test_bad_annotations_name_the_file(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "v2_mscoco_val2014_annotations.json")
      with open(path, "w") as f:
        json.dump({"annotations": [{"question_id": 7, "answers": []}]}, f)
      with self.assertRaisesRegex(ValueError, "annotations.json: question 7: field 'answers'"):
        vqa.vqav2_annotations(path)


if __name__ == "__main__":
  absltest.main()
