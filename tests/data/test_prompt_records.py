"""LLaVA's edge cases through the pipeline and the validator: a leading gpt turn is trained on
(and noted), an answer holding "</s>" or a round separator is supervised and reported."""

import os
import shutil

from absl.testing import absltest
import numpy as np

from data_samples import data_config
from data_samples import temp_data_dir
from data_samples import write_jsonl
from llava_jax.config import schema
from llava_jax.data import pipeline
from llava_jax.data import tokenize
from llava_jax.data import validate


def record(record_id, *turns, **extra):
  return {"id": record_id, **extra,
          "conversations": [{"from": r, "value": v} for r, v in turns]}


class PromptRecordsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.images = temp_data_dir()
    cls.path = os.path.join(cls.dir, "edge.jsonl")
    write_jsonl(cls.path, [
        record("leading_gpt", ("gpt", "Hello! How can I help?"), ("human", "Is it red?"),
               ("gpt", "Yes.")),
        record("eos_in_answer", ("human", "<image>\nWhat?"), ("gpt", "A ball</s> ASSISTANT: ok"),
               image="img0.png"),
    ])
    cls.model = schema.model_config("tiny")
    cls.tok = tokenize.load_tokenizer(os.path.join(schema.DEMO_DIR, "tokenizer"))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def data(self, **overrides):
    return data_config(self.path, self.images, **overrides)

  def test_leading_gpt_turn_is_dropped_and_noted(self):
    builder = pipeline.SampleBuilder(self.data(), self.model, seed=0)
    example = pipeline.read_json_examples(self.path)[0]
    encoded, _, notes = builder.tokens(example)
    supervised = encoded.labels[encoded.labels != tokenize.IGNORE]
    self.assertEqual(self.tok.decode(supervised), "Yes.</s>")
    self.assertNotIn("Hello", self.tok.decode(encoded.input_ids))
    self.assertEqual([n.split(":")[0] for n in notes], ["leading_gpt_turn"])
    it = pipeline.make_train_iterator(self.data(), self.model, global_batch_size=2, seed=0)
    next(it)
    report = it.skip_report()["total"]
    self.assertEqual((report["skipped"], report["notes"]), (0, {"leading_gpt_turn": 1}))

  def test_special_text_in_an_answer_stays_supervised(self):
    builder = pipeline.SampleBuilder(self.data(), self.model, seed=0)
    encoded, _, _ = builder.tokens(pipeline.read_json_examples(self.path)[1])
    supervised = encoded.labels[encoded.labels != tokenize.IGNORE]
    self.assertEqual(int((supervised == self.tok.eos_token_id).sum()), 2)
    self.assertIn("ASSISTANT: ok", self.tok.decode(supervised))

  def test_validate_reports_both_and_strict_start_up_accepts_them(self):
    report = validate.validate(self.path, self.images, template="vicuna_v1")
    self.assertEqual(report.counts(), {"leading_gpt_turn": 1, "special_text_in_answer": 1})
    found = next(p for p in report.problems if p.kind == "special_text_in_answer")
    self.assertEqual((found.record_id, found.field), ("eos_in_answer", "conversations[1].value"))
    self.assertIn("'</s>', ' ASSISTANT: '", found.message)
    # Strict start-up refuses repaired records (the leading gpt turn), not the info kind.
    only_info = os.path.join(self.dir, "info.jsonl")
    write_jsonl(only_info, [record("x", ("human", "q"), ("gpt", "a</s>"))])
    self.assertEqual(validate.check(self.data(path=only_info, on_error="strict")).counts(),
                     {"special_text_in_answer": 1})

  def test_placement_in_the_pipeline(self):
    path = os.path.join(self.dir, "after.jsonl")
    write_jsonl(path, [record("after", ("human", "What is it?\n<image>"), ("gpt", "A ball."),
                              image="img0.png")])
    example = pipeline.read_json_examples(path)[0]
    first_image = {}
    for placement in ("front", "as_written"):
      builder = pipeline.SampleBuilder(self.data(path=path, image_placement=placement),
                                       self.model, seed=0)
      ids = builder.build(example)["input_ids"]
      first_image[placement] = int(np.argmax(ids == self.model.image_token_id))
    self.assertLess(first_image["front"], first_image["as_written"])
    with self.assertRaisesRegex(ValueError, "data.image_placement='back'"):
      pipeline.SampleBuilder(self.data(image_placement="back"), self.model, seed=0)


if __name__ == "__main__":
  absltest.main()
