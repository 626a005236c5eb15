"""Tests for FLAN-style text instruction data (llava_jax.datagen.flan / .text)."""

import collections
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import tensorflow_datasets as tfds

from llava_jax.data import records as records_lib
from llava_jax.datagen import flan
import tiny

REPO = str(tiny.REPO)
SAMPLES = os.path.join(REPO, "data", "datagen_samples", "text")


class LlavaJaxTestNli(tfds.core.GeneratorBasedBuilder):
  """A three-example NLI dataset, built locally to exercise `--input=tfds:NAME`."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "premise": tfds.features.Text(), "hypothesis": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["entailment", "neutral", "contradiction"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, label in enumerate(["entailment", "neutral", "contradiction"]):
      yield i, {"premise": f"Premise {i} is here.", "hypothesis": f"Hypothesis {i}.",
                "label": label}


def read_jsonl(name):
  return list(flan.read_examples(os.path.join(SAMPLES, f"{name}.jsonl")))


class FlanTest(parameterized.TestCase):

  def test_nli_options_and_answers(self):
    skipped = collections.Counter()
    records = list(flan.to_records("nli", read_jsonl("nli"), skipped=skipped))
    self.assertLen(records, 4)
    self.assertEqual(skipped, {"no_gold_label": 1})  # label -1
    for record in records:
      self.assertNotIn("image", record)
      human, gpt = record["conversations"]
      self.assertEqual((human["from"], gpt["from"]), ("human", "gpt"))
      self.assertTrue(human["value"].endswith(
          "OPTIONS:\n- yes\n- it is not possible to tell\n- no"), human["value"])
      self.assertNotIn("{", human["value"])
    self.assertEqual([r["conversations"][1]["value"] for r in records],
                     ["yes", "it is not possible to tell", "no", "yes"])
    self.assertIn("A man in a red jacket", records[0]["conversations"][0]["value"])

  def test_sentiment_qa_translation(self):
    sentiment = list(flan.to_records("sentiment", read_jsonl("sentiment")))
    self.assertEqual([r["conversations"][1]["value"] for r in sentiment],
                     ["positive", "negative", "positive", "negative"])
    self.assertIn("OPTIONS:\n- negative\n- positive", sentiment[0]["conversations"][0]["value"])

    skipped = collections.Counter()
    qa = list(flan.to_records("qa", read_jsonl("qa"), skipped=skipped))
    self.assertEqual([r["id"] for r in qa], ["qa-q1", "qa-q2"])
    self.assertEqual(skipped, {"unanswerable": 1})
    self.assertEqual(qa[0]["conversations"][1]["value"], "in the Netherlands")
    self.assertIn("Where does the Rhine reach the sea?", qa[0]["conversations"][0]["value"])

    translation = list(flan.to_records("translation", read_jsonl("translation"),
                                       source_lang="en", target_lang="de"))
    self.assertEqual(translation[0]["conversations"][1]["value"],
                     "Der Zug fährt um sieben Uhr ab.")
    self.assertIn("The train leaves at seven o'clock.",
                  translation[0]["conversations"][0]["value"])
    self.assertIn("German", translation[0]["conversations"][0]["value"])

  @parameterized.parameters(*flan.TASKS)
  def test_templates_vary_with_a_seeded_rng(self, task):
    example = {"sentiment": {"text": "good", "label": 1},
               "nli": {"premise": "p.", "hypothesis": "h.", "label": 0},
               "qa": {"context": "c.", "question": "q?", "answer": "a"},
               "translation": {"source": "s", "target": "t"}}[task]
    self.assertGreaterEqual(len(flan.templates()[task]), 3)

    def prompts(seed):
      return [r["conversations"][0]["value"]
              for r in flan.to_records(task, [example] * 30, seed=seed)]

    self.assertEqual(prompts(0), prompts(0))
    self.assertNotEqual(prompts(0), prompts(1))
    self.assertEqual(len(set(prompts(0))), len(flan.templates()[task]))  # All get used.

  def test_records_the_pipeline_would_refuse_are_skipped(self):
    skipped = collections.Counter()
    records = list(flan.to_records(
        "sentiment", [{"text": "I love the <image> tag.", "label": 1}, {"text": "ok", "label": 1}],
        skipped=skipped))
    self.assertLen(records, 1)
    self.assertEqual(skipped, {"invalid_record:image_token_without_image": 1})

  def test_bad_example_names_input_example_and_field(self):
    with self.assertRaisesRegex(ValueError, r"x\.jsonl: example 1: missing or empty field "
                                            r"'hypothesis'"):
      list(flan.to_records("nli", [{"premise": "p", "hypothesis": "h", "label": 0},
                                   {"premise": "p", "label": 0}], where="x.jsonl"))

  def test_tfds_dataset_prepared_locally(self):
    with tempfile.TemporaryDirectory() as data_dir:
      LlavaJaxTestNli(data_dir=data_dir, file_format="array_record").download_and_prepare()
      examples = list(flan.read_examples("tfds:llava_jax_test_nli", "train", data_dir))
    self.assertLen(examples, 3)
    self.assertIsInstance(examples[0]["premise"], str)  # Decoded from bytes.
    records = list(flan.to_records("nli", examples))
    by_premise = {next(e["premise"] for e in examples if e["premise"] in r["conversations"][0][
        "value"]): r["conversations"][1]["value"] for r in records}
    self.assertEqual(by_premise, {"Premise 0 is here.": "yes",
                                  "Premise 1 is here.": "it is not possible to tell",
                                  "Premise 2 is here.": "no"})

  def test_cli_writes_llava_json(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "nli.json")
      result = subprocess.run(
          [sys.executable, "-m", "llava_jax.datagen.text", "--task=nli",
           f"--input={os.path.join(SAMPLES, 'nli.jsonl')}", f"--out={out}", "--seed=3"],
          cwd=REPO, capture_output=True, text=True, timeout=120)
      self.assertEqual(result.returncode, 0, result.stderr[-2000:])
      self.assertEqual(json.loads(result.stdout.strip().splitlines()[-1]),
                       {"task": "nli", "written": 4, "skipped": {"no_gold_label": 1}})
      with open(out) as f:
        records = json.load(f)
      read = records_lib.read_records(out)
    self.assertLen(read, 4)
    for rec in read:  # The training pipeline reads every record without a problem.
      self.assertEqual(records_lib.check_record(rec), [])
    self.assertEqual(records, list(flan.to_records("nli", read_jsonl("nli"), seed=3)))


if __name__ == "__main__":
  absltest.main()
