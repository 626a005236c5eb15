"""Tests for llava_jax.data.records: reading LLaVA JSON/JSONL and per-record checks."""

import io
import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from llava_jax.data import records

GOOD = {
    "id": "r1", "image": "a.png",
    "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                      {"from": "gpt", "value": "A square."},
                      {"from": "human", "value": "What color?"},
                      {"from": "gpt", "value": "Red."}],
}
TEXT_ONLY = {"id": "t1", "conversations": [{"from": "human", "value": "Hi?"},
                                           {"from": "gpt", "value": "Hello."}]}


def _png_bytes(fmt="PNG"):
  buf = io.BytesIO()
  Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


def _with(**changes):
  rec = json.loads(json.dumps(GOOD))
  rec.update(changes)
  return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


def _record(data, where="f.json[0]"):
  rec = records.make_record(data, where)
  assert isinstance(rec, records.Record)
  return rec


def _kinds(problems):
  return [p.kind for p in problems]


class ReadTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def _write(self, name, text):
    path = os.path.join(self.dir, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    return path

  def test_json_list_and_jsonl_give_the_same_records(self):
    entries = [GOOD, TEXT_ONLY, dict(GOOD, id="r2", image=["a.png", "b.png"])]
    from_json = records.read_records(self._write("d.json", json.dumps(entries, indent=2)))
    from_jsonl = records.read_records(
        self._write("d.jsonl", "\n".join(json.dumps(e) for e in entries) + "\n"))
    self.assertEqual([r.data for r in from_json], entries)
    self.assertEqual([r.data for r in from_jsonl], entries)
    self.assertEqual([r.id for r in from_json], ["r1", "t1", "r2"])
    self.assertTrue(from_json[1].where.endswith("d.json[1]"))
    self.assertTrue(from_jsonl[2].where.endswith("d.jsonl:3"))

  def test_malformed_jsonl_line_is_reported_with_file_line_and_others_survive(self):
    path = self._write("d.jsonl", "\n".join([
        json.dumps(GOOD), '{"id": "broken", "conversations": [', "", json.dumps(TEXT_ONLY),
        "[1, 2]"]))
    entries = records.read_records(path)
    self.assertLen(entries, 4)
    self.assertIsInstance(entries[0], records.Record)
    bad = entries[1]
    self.assertIsInstance(bad, records.BadLine)
    self.assertEqual(bad.where, f"{path}:2")
    self.assertEqual(bad.kind, "malformed_json")
    self.assertEqual(entries[2].id, "t1")
    self.assertEqual(entries[2].where, f"{path}:4")  # the blank line 3 is skipped
    self.assertEqual(entries[3].kind, "not_an_object")
    (problem,) = records.check_record(bad)
    self.assertEqual(problem.kind, "malformed_json")
    self.assertIn(f"{path}:2", str(problem.error()))

  def test_invalid_utf8_line(self):
    path = os.path.join(self.dir, "d.jsonl")
    with open(path, "wb") as f:
      f.write(json.dumps(TEXT_ONLY).encode() + b"\n" + b'{"id": "\xff"}\n')
    entries = records.read_records(path)
    self.assertEqual(entries[0].id, "t1")
    self.assertEqual(entries[1].kind, "malformed_json")

  def test_broken_json_list_file_names_the_file(self):
    path = self._write("d.json", '[{"id": "a"}, {"id": ')
    with self.assertRaisesRegex(records.RecordError, r"d\.json.*not valid JSON"):
      records.read_records(path)

  def test_missing_id_uses_position(self):
    path = self._write("d.json", json.dumps([{"conversations": GOOD["conversations"],
                                              "image": "a.png"}]))
    (rec,) = records.read_records(path)
    self.assertEqual(rec.id, f"{path}[0]")
    problems = records.check_record(rec)
    self.assertEqual(_kinds(problems), ["missing_id"])
    self.assertEqual(problems[0].severity, records.WARNING)

  def test_numeric_id_becomes_string(self):
    self.assertEqual(_record(dict(TEXT_ONLY, id=17)).id, "17")


class CheckConversationTest(parameterized.TestCase):

  def test_clean_records_have_no_problems(self):
    self.assertEqual(records.check_record(_record(GOOD)), [])
    self.assertEqual(records.check_record(_record(TEXT_ONLY)), [])
    self.assertEqual(records.check_record(
        _record(_with(image=["a.png", "b.png"], conversations=[
            {"from": "human", "value": "<image>\n<image>\nSame?"},
            {"from": "gpt", "value": "No."}]))), [])

  @parameterized.named_parameters(
      ("missing", _DROP, "missing_conversations", "conversations"),
      ("empty_list", [], "missing_conversations", "conversations"),
      ("not_list", "hello", "bad_conversations", "conversations"),
      ("turn_not_object", ["<image>\nhi", {"from": "gpt", "value": "x"}], "bad_turn",
       "conversations[0]"),
      ("value_not_string", [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": 3}],
       "bad_turn", "conversations[1]"),
  )
  def test_structure(self, conversations, kind, field):
    problems = records.check_record(_record(_with(conversations=conversations)))
    self.assertIn(kind, _kinds(problems))
    problem = next(p for p in problems if p.kind == kind)
    self.assertEqual(problem.field, field)
    self.assertEqual(problem.severity, records.ERROR)
    self.assertEqual(problem.record_id, "r1")

  def test_unknown_role(self):
    rec = _record(_with(conversations=[{"from": "human", "value": "<image>\nhi"},
                                       {"from": "assistant", "value": "x"}]))
    problems = records.check_record(rec)
    self.assertEqual(_kinds(problems), ["unknown_role"])
    self.assertEqual(problems[0].field, "conversations[1].from")
    self.assertIn("'assistant'", problems[0].message)

  @parameterized.named_parameters(
      ("gpt_then_two_humans", ["gpt", "human", "human", "gpt"], "conversations[2].from"),
      ("two_humans", ["human", "human", "gpt", "gpt"], "conversations[1].from"),
      ("no_final_answer", ["human", "gpt", "human"], "conversations[2]"),
  )
  def test_roles_must_alternate(self, roles, field):
    turns = [{"from": r, "value": f"turn {i}"} for i, r in enumerate(roles)]
    turns[0 if roles[0] == "human" else 1]["value"] = "<image>\nq"
    problems = [p for p in records.check_record(_record(_with(conversations=turns)))
                if p.kind != "leading_gpt_turn"]
    self.assertEqual(_kinds(problems), ["roles_not_alternating"])
    self.assertEqual(problems[0].field, field)

  def test_leading_gpt_turn_is_dropped_not_refused(self):
    # LLaVA drops a conversation's first turn when it is gpt's and trains on the rest.
    turns = [{"from": r, "value": v} for r, v in
             [("gpt", "Hello!"), ("human", "<image>\nq"), ("gpt", "a")]]
    problems = records.check_record(_record(_with(conversations=turns)))
    self.assertEqual([(p.kind, p.severity, p.field) for p in problems],
                     [("leading_gpt_turn", "warning", "conversations[0].from")])

  def test_empty_turn(self):
    rec = _record(_with(conversations=[{"from": "human", "value": "<image>\nq"},
                                       {"from": "gpt", "value": "  \n"}]))
    problems = records.check_record(rec)
    self.assertEqual(_kinds(problems), ["empty_turn"])
    self.assertEqual(problems[0].field, "conversations[1].value")

  def test_image_token_in_answer(self):
    rec = _record(_with(conversations=[{"from": "human", "value": "<image>\nq"},
                                       {"from": "gpt", "value": "see <image>"}]))
    self.assertIn("image_token_in_answer", _kinds(records.check_record(rec)))


class CheckImagesTest(parameterized.TestCase):

  def test_image_token_without_image(self):
    rec = _record(_with(image=_DROP))
    problems = records.check_record(rec)
    self.assertEqual(_kinds(problems), ["image_token_without_image"])
    self.assertEqual(problems[0].severity, records.ERROR)

  def test_image_without_token_is_a_warning(self):
    rec = _record(_with(conversations=[{"from": "human", "value": "What is it?"},
                                       {"from": "gpt", "value": "A square."}]))
    problems = records.check_record(rec)
    self.assertEqual(_kinds(problems), ["image_without_token"])
    self.assertEqual(problems[0].severity, records.WARNING)

  def test_image_token_count_mismatch(self):
    rec = _record(_with(image=["a.png", "b.png"]))
    problems = records.check_record(rec)
    self.assertEqual(_kinds(problems), ["image_token_mismatch"])
    self.assertIn("1 <image> in the text but 2 images", problems[0].message)

  @parameterized.parameters(("",), ([""],), ([3],), ({"path": "a.png"},))
  def test_bad_image_field(self, value):
    rec = _record(_with(image=value))
    self.assertEqual(_kinds(records.check_record(rec)), ["bad_image_field"])
    with self.assertRaisesRegex(records.RecordError, "'r1'.*image"):
      records.images_of(rec)

  def test_too_many_images(self):
    rec = _record(_with(image=["a.png", "b.png"], conversations=[
        {"from": "human", "value": "<image><image>q"}, {"from": "gpt", "value": "a"}]))
    self.assertEqual(_kinds(records.check_record(rec, max_images=1)), ["too_many_images"])
    self.assertEqual(records.check_record(rec, max_images=2), [])

  def test_images_of_and_paths(self):
    self.assertEqual(records.images_of(_record(GOOD)), ["a.png"])
    self.assertEqual(records.images_of(_record(TEXT_ONLY)), [])
    self.assertEqual(records.images_of(_record(_with(image=None))), [])
    rec = _record(_with(image=["x/a.png", "b.jpg"]))
    self.assertEqual(records.image_paths(rec, "/d"), ["/d/x/a.png", "/d/b.jpg"])

  def test_image_files_are_checked_by_decoding(self):
    with tempfile.TemporaryDirectory() as d:
      files = {"ok.png": _png_bytes(), "empty.jpg": b"", "gif.jpg": _png_bytes("GIF"),
               "cut.jpg": _png_bytes("JPEG")[:60]}
      for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
          f.write(data)
      expected = {"ok.png": [], "missing.png": ["missing_image"], "empty.jpg": ["empty_image"],
                  "gif.jpg": ["format_mismatch"]}
      for name, kinds in expected.items():
        problems = records.check_record(_record(_with(image=name)), d)
        self.assertEqual(_kinds(problems), kinds, name)
        for p in problems:
          self.assertIn(name, p.message)
          self.assertEqual(p.field, "image")
      (cut,) = records.check_record(_record(_with(image="cut.jpg")), d)
      self.assertIn(cut.kind, ("truncated_image", "undecodable_image"))
      # Without decoding only existence and size are checked: the GIF passes.
      self.assertEqual(records.check_record(_record(_with(image="gif.jpg")), d,
                                            decode_images=False), [])
      self.assertEqual(records.check_record(_record(_with(image="gif.jpg")), d,
                                            allow_format_mismatch=True), [])
      multi = _record(_with(image=["ok.png", "missing.png"], conversations=[
          {"from": "human", "value": "<image><image>q"}, {"from": "gpt", "value": "a"}]))
      (problem,) = records.check_record(multi, d)
      self.assertEqual(problem.field, "image[1]")


class TurnsAndErrorsTest(absltest.TestCase):

  def test_turns_of(self):
    turns = records.turns_of(_record(GOOD))
    self.assertEqual(turns[0], ("human", "<image>\nWhat is it?"))
    self.assertEqual(turns[3].role, "gpt")
    self.assertEqual(turns[3].text, "Red.")

  def test_turns_of_raises_naming_record_and_field(self):
    rec = _record(_with(conversations=[{"from": "human", "value": "q"},
                                       {"from": "bot", "value": "a"}]), where="x.jsonl:7")
    with self.assertRaises(records.RecordError) as cm:
      records.turns_of(rec)
    err = cm.exception
    self.assertIsInstance(err, ValueError)
    self.assertEqual((err.record_id, err.field, err.kind), ("r1", "conversations[1].from",
                                                            "unknown_role"))
    self.assertIn("record 'r1' (x.jsonl:7): conversations[1].from: role 'bot'", str(err))

  def test_every_kind_has_a_severity(self):
    for kind, (severity, text) in records.PROBLEM_KINDS.items():
      self.assertIn(severity, (records.ERROR, records.WARNING, records.INFO), kind)
      self.assertTrue(text)


if __name__ == "__main__":
  absltest.main()
