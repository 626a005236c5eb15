"""Tests for llava_jax.data.validate: every bad-input case found, summarized, strict exit code."""

import io
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from llava_jax.config import schema
from llava_jax.data import records
from llava_jax.data import validate
import tiny


def _encode(fmt):
  buf = io.BytesIO()
  Image.fromarray(np.full((24, 32, 3), (10, 120, 200), np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


def _conv(question="<image>\nWhat is it?", answer="A thing."):
  return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


# record id -> (record, problem kinds the validator must report for it)
CASES = {
    "good": ({"image": "ok.jpg", "conversations": _conv()}, []),
    "text_only": ({"conversations": _conv("Hi?", "Hello.")}, []),
    "missing_file": ({"image": "nope.jpg", "conversations": _conv()}, ["missing_image"]),
    "zero_bytes": ({"image": "empty.jpg", "conversations": _conv()}, ["empty_image"]),
    "gif_as_jpg": ({"image": "anim.jpg", "conversations": _conv()}, ["format_mismatch"]),
    "truncated": ({"image": "cut.jpg", "conversations": _conv()}, ["truncated_image"]),
    "no_conversations": ({"image": "ok.jpg"}, ["missing_conversations"]),
    "unknown_role": ({"image": "ok.jpg", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "robot", "value": "a"}]},
                     ["unknown_role"]),
    "not_alternating": ({"image": "ok.jpg", "conversations": _conv() + [
        {"from": "gpt", "value": "again"}]}, ["roles_not_alternating"]),
    "empty_turn": ({"image": "ok.jpg", "conversations": _conv(answer=" ")}, ["empty_turn"]),
    "token_no_image": ({"conversations": _conv()}, ["image_token_without_image"]),
    "image_no_token": ({"image": "ok.jpg", "conversations": _conv("What is it?")},
                       ["image_without_token"]),
    "two_problems": ({"image": "nope.jpg", "conversations": _conv("q", "")},
                     ["empty_turn", "image_without_token", "missing_image"]),
}


def _write_bad_set(d):
  images = os.path.join(d, "images")
  os.makedirs(images)
  jpeg = _encode("JPEG")
  for name, data in {"ok.jpg": jpeg, "empty.jpg": b"", "anim.jpg": _encode("GIF"),
                     "cut.jpg": jpeg[:len(jpeg) * 2 // 3]}.items():
    with open(os.path.join(images, name), "wb") as f:
      f.write(data)
  lines = [json.dumps({"id": rid, **rec}) for rid, (rec, _) in CASES.items()]
  lines.insert(3, '{"id": "malformed", "conversations": [{"from": "human",')  # line 4
  path = os.path.join(d, "data.jsonl")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path, images


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "llava_jax.data.validate", *args],
                        capture_output=True, text=True, timeout=120,
                        cwd=str(tiny.REPO))


class ValidateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.data, cls.images = _write_bad_set(cls.tmp.name)
    cls.report = validate.validate(cls.data, cls.images, num_threads=2)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_every_bad_case_is_reported_for_its_record(self):
    found = {}
    for p in self.report.problems:
      found.setdefault(p.record_id, []).append(p.kind)
    for rid, (_, kinds) in CASES.items():
      self.assertCountEqual(found.get(rid, []), kinds, rid)
    malformed = f"{self.data}:4"
    self.assertEqual(found[malformed], ["malformed_json"])
    self.assertEqual(self.report.num_records, len(CASES) + 1)

  def test_summary_counts_and_first_ids(self):
    counts = self.report.counts()
    self.assertEqual(counts["missing_image"], 2)
    self.assertEqual(counts["empty_turn"], 2)
    self.assertEqual(self.report.ids("missing_image"), ["missing_file", "two_problems"])
    table = self.report.table(max_ids=1)
    self.assertRegex(table, r"missing_image\s+error\s+2\s+missing_file, \.\.\. \(\+1\)")
    self.assertRegex(table, r"image_without_token\s+warning\s+2\s+image_no_token")
    self.assertIn(f"{len(CASES) + 1} records", table)
    self.assertIn("with warnings only", table)
    self.assertEqual(self.report.records_with(records.WARNING) -
                     self.report.records_with(records.ERROR), {"image_no_token"})

  def test_raise_if_problems_names_the_first_record(self):
    with self.assertRaisesRegex(records.RecordError, r"'missing_file'.*image.*nope\.jpg"):
      self.report.raise_if_problems()

  def test_text_only_check_without_image_dir(self):
    report = validate.validate(self.data, None)
    kinds = set(report.counts())
    self.assertNotIn("missing_image", kinds)
    self.assertIn("unknown_role", kinds)

  def test_check_from_data_config(self):
    cfg = schema.data_config()
    cfg.path, cfg.image_dir, cfg.on_error = self.data, self.images, "strict"
    with self.assertRaisesRegex(records.RecordError, "missing_file"):
      validate.check(cfg)
    cfg.on_error = "skip"
    with self.assertLogs(level="WARNING") as logs:
      report = validate.check(cfg, schema.model_config("tiny"))
    self.assertIn("missing_image", "\n".join(logs.output))
    # Start-up check does not decode: the GIF named .jpg and the truncated JPEG pass it.
    self.assertNotIn("format_mismatch", report.counts())
    self.assertIn("empty_image", report.counts())
    cfg.path = self.tmp.name  # a directory = prepared shards, not checked here
    self.assertIsNone(validate.check(cfg))

  def test_check_passes_the_demo_defaults(self):
    report = validate.check(schema.data_config(), decode_images=True)
    self.assertTrue(report.clean)

  def test_cli_strict_exits_nonzero_and_lists_every_record(self):
    result = _run_cli(f"--data={self.data}", f"--images={self.images}", "--strict")
    self.assertEqual(result.returncode, 1, result.stderr)
    for rid, (_, kinds) in CASES.items():
      for kind in kinds:
        self.assertRegex(result.stdout, rf"{rid} \(.*\) .*\[{kind}\]")
    self.assertIn(f"{self.data}:4", result.stdout)
    self.assertRegex(result.stdout, r"problem\s+severity\s+count\s+first ids")

  def test_cli_exit_codes(self):
    self.assertEqual(_run_cli(f"--data={self.data}", f"--images={self.images}").returncode, 0)
    clean = os.path.join(self.tmp.name, "clean.json")
    with open(clean, "w") as f:
      json.dump([{"id": "good", **CASES["good"][0]}], f)
    result = _run_cli(f"--data={clean}", f"--images={self.images}", "--strict")
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    self.assertIn("no problems found", result.stdout)
    missing = _run_cli(f"--data={self.tmp.name}/absent.json", "--strict")
    self.assertEqual(missing.returncode, 2)
    self.assertIn("absent.json", missing.stderr)


if __name__ == "__main__":
  absltest.main()
