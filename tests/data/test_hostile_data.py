"""Hostile data: every case is caught at its record, counted by kind and named, in validate and
in a skip-mode pipeline alike (also inside Grain workers); strict mode stops naming the record."""

import collections
import json
import os
import shutil
import struct
import subprocess
import sys
from unittest import mock
import zlib

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from data_samples import BAD
from data_samples import data_config
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
_HI, _BYE = {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Bye."}
# The older kinds that BAD leaves out; each record has exactly that one problem.
OLDER = {
    "not_an_object": ("[1, 2]", "not_an_object"),
    "conversations_not_a_list": ({"id": "bad_convstr", "conversations": "Hi?"},
                                 "bad_conversations"),
    "turn_without_value": ({"id": "bad_turn", "conversations": [{"from": "human"}, _BYE]},
                           "bad_turn"),
    "two_answers": ({"id": "bad_order", "conversations": [_HI, _BYE, _BYE]},
                    "roles_not_alternating"),
    "blank_answer": (qa("bad_blank", "Hi?", " "), "empty_turn"),
    "image_not_a_string": (qa("bad_imgfield", "<image>\nWhat?", image=5), "bad_image_field"),
    "two_tokens_one_image": (qa("bad_mismatch", "<image>\n<image>\nWhat?", image="img0.png"),
                             "image_token_mismatch"),
    "token_in_answer": (qa("bad_tokanswer", "What?", "An <image>.", image="img0.png"),
                        "image_token_in_answer"),
    "two_images": (qa("bad_twoimg", "<image><image>\nWhat?", image=["img0.png", "img1.png"]),
                   "too_many_images"),
    "garbage_bytes": (qa("bad_garbage", "<image>\nWhat?", image="garbage.png"),
                      "undecodable_image"),
    "bomb_header": (qa("bad_bomb", "<image>\nWhat?", image="bomb.png"), "image_too_large"),
}
# Warnings: skip mode repairs, uses and notes them; strict mode refuses them.
REPAIRED = {
    "no_id": ({"image": "img2.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, _BYE]}, "missing_id"),
    "leading_gpt_turn": ({"id": "fix_lead", "conversations": [_BYE, _HI, _BYE]},
                         "leading_gpt_turn"),
    "image_without_token": (qa("fix_notoken", "What is it?", image="img3.png"),
                            "image_without_token"),
}
# Info: validate reports it; both modes train on it as written.
AS_WRITTEN = {"special_text": (qa("info_eos", "Hi?", "Done.</s> Next."), "special_text_in_answer")}
# Every record the pipeline skips (validate names no too_long: it does not tokenize).
SKIPPED = {**BAD, **OLDER, **HOSTILE}
ALL = {**SKIPPED, **REPAIRED, **AS_WRITTEN}
FOUND_ONLY_BY_DECODING = ("truncated_image", "format_mismatch", "bad_geometry",
                          "undecodable_image", "image_too_large")
# The field each kind is found in (the rest are found in "image"); strict mode names it too.
FIELDS = {"malformed_json": "<line>", "not_an_object": "<line>", "too_long": "",
          "unknown_role": "conversations[1].from", "bad_turn": "conversations[0]",
          "roles_not_alternating": "conversations[2].from", "empty_turn": "conversations[1].value",
          "invalid_text": "conversations[0].value", "image_token_in_answer":
          "conversations[1].value", "special_text_in_answer": "conversations[1].value",
          "missing_id": "id", "leading_gpt_turn": "conversations[0].from",
          **{kind: "conversations" for kind in (
              "missing_conversations", "bad_conversations", "image_token_without_image",
              "image_token_mismatch", "image_without_token")}}


def _id(entry, where):
  return entry.get("id", where) if isinstance(entry, dict) else where


def _counts(cases):
  return dict(collections.Counter(kind for _, kind in cases.values()))


def _png_header(width, height):
  """A PNG whose header claims width x height (a decompression bomb as far as Pillow can tell)."""
  def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _write_hostile_images(images):
  os.mkfifo(os.path.join(images, "fifo.png"))
  os.makedirs(os.path.join(images, "subdir"))
  Image.fromarray(np.zeros((10, 1000, 3), np.uint8)).save(os.path.join(images, "thin.png"))
  with open(os.path.join(images, "garbage.png"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(300))
  with open(os.path.join(images, "bomb.png"), "wb") as f:
    f.write(_png_header(20000, 20000))


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
    return data_config(self.path, self.images, **overrides)

  def where(self, name):
    """file:line of case `name` (after the first three good records)."""
    return f"{self.path}:{4 + list(ALL).index(name)}"

  @parameterized.parameters(True, False)
  def test_validate_names_every_record_with_its_kind(self, decode):
    report = validate.validate(self.path, self.images, decode_images=decode, max_images=1,
                               num_threads=2)
    self.assertEqual(report.num_records, len(self.good) + len(ALL))
    expected = {}
    for name, (entry, kind) in ALL.items():
      if kind == "too_long" or (not decode and kind in FOUND_ONLY_BY_DECODING):
        continue
      where = self.where(name)
      expected[where] = (_id(entry, where), FIELDS.get(kind, "image"), kind)
    self.assertEqual({p.where: (p.record_id, p.field, p.kind) for p in report.problems}, expected)
    self.assertLen(report.problems, len(expected))
    if decode:
      self.assertEqual(report.counts(), _counts({k: v for k, v in ALL.items()
                                                 if v[1] != "too_long"}))

  def _epoch_0(self, **overrides):
    """(used, skipped by kind, noted by kind, ids named) over the first epoch of a skip-mode run."""
    it = pipeline.make_train_iterator(self.data(skip_reasons_shown=100, **overrides), self.model,
                                      global_batch_size=1, seed=0)
    try:
      for _ in range(len(self.good) + len(REPAIRED) + len(AS_WRITTEN) + 1):   # into epoch 1
        next(it)
      report = it.skip_report()
    finally:
      if hasattr(it, "close"):
        it.close()
    total, now = report["total"], report["this_epoch"]
    used = total["used"] - now["used"]
    skipped = {k: v - now["by_reason"].get(k, 0) for k, v in total["by_reason"].items()}
    noted = {k: v - now["notes"].get(k, 0) for k, v in total["notes"].items()}
    named = [record_id for record_id, _ in total["first"][:sum(skipped.values())]]
    return used, skipped, noted, named

  def check_skip_run(self, **overrides):
    used, skipped, noted, named = self._epoch_0(**overrides)
    self.assertEqual(used, len(self.good) + len(REPAIRED) + len(AS_WRITTEN))
    self.assertEqual(skipped, _counts(SKIPPED))
    self.assertEqual(noted, _counts(REPAIRED))
    self.assertCountEqual(named, [_id(e, self.where(n)) for n, (e, _) in SKIPPED.items()])

  def test_skip_mode_run_finishes_with_the_right_counts(self):
    self.check_skip_run()

  def test_skip_mode_in_grain_workers_finishes_with_the_right_counts(self):
    self.check_skip_run(num_workers=1)

  @parameterized.named_parameters(*[(name, name) for name in {**SKIPPED, **REPAIRED}])
  def test_strict_mode_stops_naming_the_record(self, name):
    entry, kind = ALL[name]
    path = os.path.join(self.dir, f"strict_{name}.jsonl")
    write_jsonl(path, self.good[:2] + [entry])
    it = pipeline.make_train_iterator(self.data(path=path, on_error="strict"), self.model,
                                      global_batch_size=3, seed=0)
    with self.assertRaises(records.RecordError) as caught:
      next(it)
    where, field = f"{path}:3", FIELDS.get(kind, "image")
    self.assertEqual((caught.exception.record_id, caught.exception.kind), (_id(entry, where), kind))
    self.assertIn(where, str(caught.exception))
    if not field.startswith("<"):   # an unreadable line is the whole record
      self.assertIn(f"{kind}: {field}", str(caught.exception))

  def test_strict_mode_trains_on_info_records(self):
    path = os.path.join(self.dir, "strict_info.jsonl")
    write_jsonl(path, self.good[:2] + [e for e, _ in AS_WRITTEN.values()])
    it = pipeline.make_train_iterator(self.data(path=path, on_error="strict"), self.model,
                                      global_batch_size=2 + len(AS_WRITTEN), seed=0)
    self.assertEqual(next(it)["input_ids"].shape[0], 2 + len(AS_WRITTEN))

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
