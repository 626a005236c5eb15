"""Grain pipeline: the Batch contract, bad input skipped or refused, exact iterator restore."""

import hashlib
import json
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import grain
import numpy as np
import orbax.checkpoint as ocp

from data_samples import BAD
from data_samples import LONG
from data_samples import assert_resumes_exactly
from data_samples import data_config
from data_samples import good_records
from data_samples import qa
from data_samples import temp_data_dir
from data_samples import write_jsonl
from llava_jax.config import check as config_check
from llava_jax.config import schema
from llava_jax.data import image
from llava_jax.data import pipeline
from llava_jax.data import records
from llava_jax.data import tokenize
from llava_jax.infer import prompting


def fingerprint(row):
  return hashlib.md5(row.tobytes()).hexdigest()[:8]


class PipelineTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.images = temp_data_dir()
    cls.good = good_records(7)
    # Image with no <image> in the text: used, with <image> prepended.
    cls.fixed = qa("fix_marker", "What is this?", image="img2.png")
    cls.mixed = os.path.join(cls.dir, "mixed.jsonl")
    entries = cls.good[:4] + [e for e, _ in BAD.values()] + [cls.fixed] + cls.good[4:]
    write_jsonl(cls.mixed, entries)
    cls.clean = os.path.join(cls.dir, "clean.json")
    with open(cls.clean, "w") as f:
      json.dump(cls.good, f)
    cls.model = schema.model_config("tiny")
    cls.tok = tokenize.load_tokenizer(os.path.join(schema.DEMO_DIR, "tokenizer"))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def data(self, path=None, **overrides):
    return data_config(path or self.mixed, self.images, **overrides)

  def iterator(self, batch=2, seed=0, **overrides):
    return pipeline.make_train_iterator(self.data(**overrides), self.model,
                                        global_batch_size=batch, seed=seed)

  def test_batch_contract(self):
    b = next(self.iterator(batch=6, path=self.clean))
    self.assertEqual({k: (v.shape, v.dtype.name) for k, v in b.items()}, {
        "input_ids": ((6, 128), "int32"), "labels": ((6, 128), "int32"),
        "segment_ids": ((6, 128), "int32"), "positions": ((6, 128), "int32"),
        "pixels": ((6, 1, 64, 64, 3), "float32")})
    image_id = self.model.image_token_id
    for row in range(6):
      ids, labels, seg = b["input_ids"][row], b["labels"][row], b["segment_ids"][row]
      n = int(seg.sum())
      self.assertEqual(seg.tolist(), [1] * n + [0] * (128 - n))
      self.assertEqual(b["positions"][row, :n].tolist(), list(range(n)))
      self.assertTrue(np.all(ids[n:] == self.tok.pad_token_id))
      supervised = labels != tokenize.IGNORE
      self.assertTrue(supervised.any())
      np.testing.assert_array_equal(labels[supervised], ids[supervised])
      self.assertFalse(supervised[n:].any())
      n_image = int((ids == image_id).sum())
      self.assertIn(n_image, (0, 64))
      self.assertFalse(supervised[ids == image_id].any())
      # Text-only rows get zero pixels; image rows get a CLIP-normalized image.
      self.assertEqual(bool(np.any(b["pixels"][row])), n_image == 64)
      self.assertEqual(ids[0], self.tok.bos_token_id)

  @parameterized.parameters("pad", "crop")
  def test_pixels_are_clip_preprocessed(self, aspect):
    d = self.data(path=self.clean, image_aspect=aspect)
    example = pipeline.read_json_examples(self.clean)[0]
    row = pipeline.SampleBuilder(d, self.model, seed=0).build(example)
    with open(os.path.join(self.images, example.data["image"]), "rb") as f:
      encoded = f.read()
    # What chat, the API and the server feed the model for the same file: bit-identical.
    encoder = prompting.PromptEncoder(self.tok, image_token_id=self.model.image_token_id,
                                      num_image_tokens=schema.num_image_tokens(self.model),
                                      image_size=64, image_aspect=aspect, context_len=512)
    _, served = encoder.encode([prompting.Message("user", [encoded, "What is it?"])])
    np.testing.assert_array_equal(row["pixels"], served)
    np.testing.assert_array_equal(row["pixels"][0], image.preprocess(image.decode_image(encoded),
                                                                     64, aspect))
    self.assertEqual(row["pixels"].shape, (1, 64, 64, 3))

  def test_several_images_per_sample(self):
    d = self.data(path=self.clean, max_images=2, max_len=256)
    builder = pipeline.SampleBuilder(d, self.model, seed=0)
    two = records.Record("two", where="x:1", data=qa("two", "<image>\nAnd <image>\nSame?", "No.",
                                            image=["img0.png", "img1.png"]))
    row = builder.build(two)
    self.assertEqual(row["pixels"].shape, (2, 64, 64, 3))
    np.testing.assert_allclose(row["pixels"][1], image.preprocess(
        image.load_image(os.path.join(self.images, "img1.png")), 64, "pad"), atol=1e-6)
    starts = np.flatnonzero(np.diff((row["input_ids"] == self.model.image_token_id).astype(int))
                            == 1)
    self.assertLen(starts, 2)   # two separate runs of 64 image tokens
    one = records.Record("one", where="x:2", data=qa("one", "<image>\nWhat?", image="img0.png"))
    self.assertFalse(builder.build(one)["pixels"][1].any())   # zeros past the sample's images
    three = records.Record("three", where="x:3", data=qa("three", "<image><image><image>", image=[
        "img0.png", "img1.png", "img2.png"]))
    with self.assertRaisesRegex(pipeline.BadSampleError, "too_many_images"):
      builder.build(three)

  def test_bad_input_is_skipped_counted_and_logged(self):
    it = self.iterator(batch=1)
    used = len(self.good) + 1
    with self.assertLogs(level="INFO") as logs:
      for _ in range(used + 1):   # one more batch crosses into epoch 1
        next(it)
    report = it.skip_report()
    self.assertEqual(report["epoch"], 1)
    total, now = report["total"], report["this_epoch"]
    epoch0 = lambda key: {k: v - now[key].get(k, 0) for k, v in total[key].items()}
    self.assertEqual(epoch0("by_reason"), {kind: 1 for _, kind in BAD.values()})
    self.assertEqual(epoch0("notes"), {"image_without_token": 1})
    self.assertEqual(report["total"]["used"] - report["this_epoch"]["used"], used)
    text = "\n".join(logs.output)
    self.assertRegex(text, r"data epoch 0: 8 samples used, 9 skipped")
    self.assertIn("skipped record", text)
    self.assertIn("fix_marker", text)   # the warn-once for the prepended <image>
    shown = [rid for rid, _ in report["total"]["first"]]
    self.assertLen(shown, 5)
    self.assertTrue(all(rid.startswith("bad_") or ":" in rid for rid in shown), shown)

  @parameterized.parameters(("template", "nope"), ("image_aspect", "squash"),
                            ("image_placement", "back"), ("on_error", "ignore"))
  def test_bad_enum_fields_are_refused_by_the_config_check_off_main(self, field, value):
    # A notebook builds the pipeline without main: config_check still names the field.
    with self.assertRaisesRegex(config_check.ConfigError, f"config.data.{field}='{value}'"):
      self.iterator(path=self.clean, **{field: value})
    with self.assertRaisesRegex(config_check.ConfigError, f"config.data.{field}='{value}'"):
      pipeline.SampleBuilder(self.data(path=self.clean, **{field: value}), self.model, seed=0)

  @parameterized.named_parameters(*[(name, name) for name in BAD])
  def test_strict_mode_names_the_record(self, name):
    entry, kind = BAD[name]
    path = os.path.join(self.dir, f"strict_{name}.jsonl")
    write_jsonl(path, self.good[:2] + [entry])
    it = self.iterator(batch=3, path=path, on_error="strict")
    record_id = entry["id"] if isinstance(entry, dict) else f"{path}:3"
    with self.assertRaisesRegex(records.RecordError, f"{record_id}.*{kind}"):
      next(it)

  def test_strict_mode_refuses_image_without_marker(self):
    path = os.path.join(self.dir, "strict_fix.jsonl")
    write_jsonl(path, [self.fixed])
    with self.assertRaisesRegex(records.RecordError, "fix_marker.*image_without_token"):
      next(self.iterator(batch=1, path=path, on_error="strict"))

  def test_prepended_image_marker_gives_image_tokens(self):
    path = os.path.join(self.dir, "fix.jsonl")
    write_jsonl(path, [self.fixed])
    b = next(self.iterator(batch=1, path=path))
    self.assertEqual(int((b["input_ids"] == self.model.image_token_id).sum()), 64)
    self.assertTrue(np.any(b["pixels"]))

  def test_shuffle_is_seeded_and_differs_per_epoch(self):
    def epochs(seed):
      it = self.iterator(batch=7, path=self.clean, seed=seed)
      return [[fingerprint(r) for r in next(it)["input_ids"]] for _ in range(2)]
    a, b = epochs(0), epochs(0)
    self.assertEqual(a, b)
    self.assertEqual(sorted(a[0]), sorted(a[1]))   # each epoch is a permutation of the data
    self.assertNotEqual(a[0], a[1])                # reshuffled
    self.assertNotEqual(epochs(1)[0], a[0])

  def test_restore_is_exact_across_an_epoch_boundary(self):
    unbroken = self.iterator(batch=3)
    expected = [next(unbroken) for _ in range(7)]   # 8 usable samples/epoch: crosses twice
    it = self.iterator(batch=3)
    for _ in range(2):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    restored = self.iterator(batch=3)
    restored.set_state(state)
    for want in expected[2:]:
      got = next(restored)
      for k in pipeline.BATCH_KEYS:
        np.testing.assert_array_equal(got[k], want[k])
    self.assertEqual(restored.skip_report(), unbroken.skip_report())
    with self.assertRaisesRegex(ValueError, "saved with data.num_workers=0"):
      self.iterator(batch=3, num_workers=2).set_state(state)   # fails before starting workers

  def test_orbax_checkpoint_of_the_iterator(self):
    it = self.iterator(batch=3)
    next(it)
    with tempfile.TemporaryDirectory() as d:
      manager = ocp.CheckpointManager(d, item_names=("data_iter",))
      manager.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
      manager.wait_until_finished()
      want = [next(it) for _ in range(3)]
      restored = self.iterator(batch=3)
      manager.restore(1, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(restored)))
      manager.close()
    for w in want:
      np.testing.assert_array_equal(next(restored)["input_ids"], w["input_ids"])

  def test_workers_restore_exactly_across_an_epoch_boundary(self):
    it = self.iterator(batch=3, num_workers=2)
    try:
      unbroken = [next(it) for _ in range(2)]
      state = json.loads(json.dumps(it.get_state()))
      unbroken += [next(it) for _ in range(4)]   # 8 usable samples per epoch: crosses one
      report = it.skip_report()
    finally:
      it.close()
    assert_resumes_exactly(self, self.iterator(batch=3, num_workers=2), state, unbroken[2:],
                           report)
    self.assertGreaterEqual(report["epoch"], 1)
    self.assertEqual(set(report["total"]["by_reason"]), {kind for _, kind in BAD.values()})

  def test_each_host_reads_its_own_shard(self):
    seen = []
    for host in range(2):
      it = pipeline.make_train_iterator(self.data(path=self.clean), self.model,
                                        global_batch_size=4, seed=0, process_index=host,
                                        process_count=2)
      b = next(it)
      self.assertEqual(b["input_ids"].shape, (2, 128))
      seen.append({fingerprint(r) for r in b["input_ids"]})
    self.assertEqual(seen[0] & seen[1], set())
    with self.assertRaisesRegex(ValueError, "not divisible"):
      pipeline.make_train_iterator(self.data(), self.model, global_batch_size=3, seed=0,
                                   process_count=2)

  def test_random_image_placement(self):
    d = self.data(path=self.clean, image_placement="random")
    builder = pipeline.SampleBuilder(d, self.model, seed=0)
    example = pipeline.read_json_examples(self.clean)[0]
    placements = set()
    for index in range(12):
      ids = builder.build(example, index)["input_ids"]
      first_image = int(np.argmax(ids == self.model.image_token_id))
      placements.add(first_image)
      again = builder.build(example, index)["input_ids"]
      np.testing.assert_array_equal(ids, again)   # seeded by (seed, index)
    self.assertLen(placements, 2)                 # before and after the question

  def test_truncation_note_and_kept_answer(self):
    rec = {"id": "long_chat", "conversations": [
        {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "More?"}, {"from": "gpt", "value": LONG}]}
    path = os.path.join(self.dir, "trunc.jsonl")
    write_jsonl(path, [rec])
    it = self.iterator(batch=1, path=path)
    b = next(it)
    self.assertEqual(it.skip_report()["total"]["notes"], {"truncated": 1})
    labels = b["labels"][0]
    self.assertEqual(self.tok.decode(labels[labels != tokenize.IGNORE]), "Hello.</s>")


if __name__ == "__main__":
  absltest.main()
