"""Hostile data: every case is caught at its record, counted by kind and named, in validate and
in a skip-mode pipeline alike (also inside Grain workers); strict mode stops naming the record."""

import json
import os
import shutil
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from data_samples import BAD
from data_samples import good_records
from data_samples import qa
from data_samples import temp_data_dir
from data_samples import write_jsonl
from llava_jax.config import schema
from llava_jax.data import pipeline
from llava_jax.data import records
from llava_jax.data import validate

# name -> (record, kind). Written with json.dumps, so "\ud800" reaches the file as an escape that
# json.loads turns back into a lone surrogate.
HOSTILE = {
    "lone_surrogate": (qa("bad_surrogate", "<image>\nWhat is \ud800 this?", image="img0.png"),
                       "invalid_text"),
    "nul_in_path": (qa("bad_nul", "<image>\nWhat?", image="img\x000.png"), "bad_image_path"),
    "long_name": (qa("bad_longname", "<image>\nWhat?", image="x" * 300 + ".png"),
                  "unreadable_image"),
    "fifo": (qa("bad_fifo", "<image>\nWhat?", image="fifo.png"), "not_a_file"),
    "directory": (qa("bad_dir", "<image>\nWhat?", image="subdir"), "not_a_file"),
    "thin_image": (qa("bad_thin", "<image>\nWhat?", image="thin.png"), "bad_geometry"),
}
# Both sets, as the pipeline counts them (validate names no too_long: it does not tokenize).
ALL = {**{k: v for k, v in BAD.items() if v[1] != "too_long"}, **HOSTILE}


def _write_hostile_images(images):
  os.mkfifo(os.path.join(images, "fifo.png"))
  os.makedirs(os.path.join(images, "subdir"))
  Image.fromarray(np.zeros((10, 1000, 3), np.uint8)).save(os.path.join(images, "thin.png"))


class HostileDataTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.images = temp_data_dir()
    _write_hostile_images(cls.images)
    cls.good = good_records(5)
    cls.path = os.path.join(cls.dir, "hostile.jsonl")
    write_jsonl(cls.path, cls.good[:3] + [e for e, _ in ALL.values()] + cls.good[3:])
    cls.model = schema.model_config("tiny")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def data(self, **overrides):
    d = schema.data_config()
    d.update(dict(path=self.path, image_dir=self.images, max_len=128, num_workers=0))
    d.update(overrides)
    return d

  def expected_counts(self):
    return {kind: sum(1 for _, k in ALL.values() if k == kind) for _, kind in ALL.values()}

  @parameterized.parameters(True, False)
  def test_validate_names_every_record_with_its_kind(self, decode):
    report = validate.validate(self.path, self.images, decode_images=decode, num_threads=2)
    self.assertEqual(report.num_records, len(self.good) + len(ALL))
    for name, (entry, kind) in ALL.items():
      if not decode and kind in ("truncated_image", "format_mismatch", "bad_geometry"):
        continue   # found only by decoding
      record_id = entry["id"] if isinstance(entry, dict) else None
      found = [p for p in report.problems if p.kind == kind]
      self.assertTrue(found, name)
      if record_id:
        self.assertIn(record_id, [p.record_id for p in found], name)
    if decode:
      self.assertEqual({k: v for k, v in report.counts().items() if k != "missing_id"},
                       self.expected_counts())

  def _skip_counts(self, **overrides):
    it = pipeline.make_train_iterator(self.data(**overrides), self.model, global_batch_size=1,
                                      seed=0)
    try:
      for _ in range(len(self.good) + 1):   # one more batch crosses into epoch 1
        next(it)
      report = it.skip_report()
    finally:
      if hasattr(it, "close"):
        it.close()
    total, now = report["total"], report["this_epoch"]
    used = total["used"] - now["used"]
    return used, {k: v - now["by_reason"].get(k, 0) for k, v in total["by_reason"].items()}

  def test_skip_mode_run_finishes_with_the_right_counts(self):
    used, skipped = self._skip_counts()
    self.assertEqual(used, len(self.good))
    self.assertEqual(skipped, self.expected_counts())

  def test_skip_mode_in_grain_workers_finishes_with_the_right_counts(self):
    used, skipped = self._skip_counts(num_workers=1)
    self.assertEqual(used, len(self.good))
    self.assertEqual(skipped, self.expected_counts())

  @parameterized.named_parameters(*[(name, name) for name in HOSTILE])
  def test_strict_mode_stops_naming_the_record(self, name):
    entry, kind = HOSTILE[name]
    path = os.path.join(self.dir, f"strict_{name}.jsonl")
    write_jsonl(path, self.good[:2] + [entry])
    it = pipeline.make_train_iterator(self.data(path=path, on_error="strict"), self.model,
                                      global_batch_size=3, seed=0)
    with self.assertRaisesRegex(records.RecordError, f"{entry['id']}.*{kind}"):
      next(it)

  def test_an_unexpected_failure_is_caught_at_the_record_and_named(self):
    render = pipeline.conversation.render

    def failing_render(template, turns, **kwargs):
      if any("boom" in text for _, text in turns):
        raise TypeError("tokenizer exploded")
      return render(template, turns, **kwargs)

    path = os.path.join(self.dir, "boom.jsonl")
    write_jsonl(path, self.good[:2] + [qa("bad_boom", "boom?")])
    with mock.patch.object(pipeline.conversation, "render", failing_render):
      it = pipeline.make_train_iterator(self.data(path=path), self.model, global_batch_size=2,
                                        seed=0)
      next(it)
      next(it)
      first = it.skip_report()["total"]["first"]
      self.assertEqual(first[0][0], "bad_boom")
      self.assertRegex(first[0][1], r"^build_error: .*boom.jsonl:3: TypeError: tokenizer")
      strict = pipeline.make_train_iterator(self.data(path=path, on_error="strict"), self.model,
                                            global_batch_size=3, seed=0)
      with self.assertRaisesRegex(records.RecordError, "bad_boom.*TypeError"):
        next(strict)
    check = records.check_record
    with mock.patch.object(validate.records_lib, "check_record",
                           lambda rec, *a, **k: 1 / 0 if rec.id == "bad_boom" else check(rec, *a,
                                                                                         **k)):
      report = validate.validate(path, self.images)
    self.assertEqual(report.ids("build_error"), ["bad_boom"])
    self.assertIn("ZeroDivisionError", report.problems[0].message)


class FileLevelTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir, self.images = temp_data_dir()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_json_list_with_a_bom_is_read_as_a_list(self):
    path = os.path.join(self.dir, "bom.json")
    entries = good_records(4) + [BAD["missing_image"][0]]
    with open(path, "wb") as f:
      f.write(b"\xef\xbb\xbf" + json.dumps(entries, indent=1).encode())
    report = validate.validate(path, self.images)
    self.assertEqual(report.num_records, 5)
    self.assertEqual(report.counts(), {"missing_image": 1})
    self.assertLen(pipeline.read_json_examples(path), 5)

  def test_jsonl_with_a_bom_reads_its_first_line(self):
    path = os.path.join(self.dir, "bom.jsonl")
    write_jsonl(path, good_records(2))
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(b"\xef\xbb\xbf" + data)
    self.assertEqual(validate.validate(path, self.images).counts(), {})

  def test_an_empty_dataset_is_an_error(self):
    for name, text in (("empty.jsonl", ""), ("empty.json", "[]")):
      path = os.path.join(self.dir, name)
      with open(path, "w") as f:
        f.write(text)
      data = schema.data_config()
      data.update(dict(path=path, image_dir=self.images))
      with self.assertRaisesRegex(validate.EmptyDataError, f"{name}.*no records"):
        validate.check(data)
      result = subprocess.run([sys.executable, "-m", "llava_jax.data.validate", f"--data={path}"],
                              capture_output=True, text=True, timeout=120)
      self.assertEqual(result.returncode, 2, result.stderr)
      self.assertIn("no records", result.stderr)


if __name__ == "__main__":
  absltest.main()
