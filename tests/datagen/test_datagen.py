"""Tests for llava_jax.datagen: context, prompts, parsing, client, resumable generation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
from absl.testing import parameterized

import fake_openai
from llava_jax import openai_client as client_lib
from llava_jax.data import records as records_lib
from llava_jax.datagen import annotations
from llava_jax.datagen import context
from llava_jax.datagen import generate
from llava_jax.datagen import journal
from llava_jax.datagen import parse
from llava_jax.datagen import prompts
import tiny

REPO = str(tiny.REPO)
SAMPLES = os.path.join(REPO, "data", "datagen_samples")


def saved_response(name: str) -> str:
  """The assistant text of a saved chat-completion response body."""
  with open(os.path.join(SAMPLES, "responses", f"{name}.json")) as f:
    return json.load(f)["choices"][0]["message"]["content"]


def kind_of(request: dict) -> str:
  """Which generator a request comes from, recognised by its system message."""
  system = request["messages"][0]["content"]
  return next(k for k in prompts.TYPES if prompts.load(k).system == system)


def good_reply(request: dict) -> str:
  """Valid responses, made unique per image so that deduplication keeps them all."""
  kind = kind_of(request)
  first_caption = request["messages"][-1]["content"].splitlines()[0]
  name = {"conv": "conv_ok", "detail": "detail_ok", "reasoning": "reasoning_ok"}[kind]
  return f"{saved_response(name)} ({first_caption})"


def line_count(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return f.read().count("\n")


def fake_annotations(n: int) -> list[annotations.ImageAnnotation]:
  return [annotations.ImageAnnotation(id=f"img{i}", image=f"img{i}.jpg",
                                      captions=(f"Caption number {i}.", "Another one."),
                                      boxes=(("cat", (0.1, 0.2, 0.3, 0.4)),))
          for i in range(n)]


class AnnotationsTest(absltest.TestCase):

  def test_jsonl_normalizes_pixel_boxes_and_keeps_normalized_ones(self):
    anns = annotations.load([os.path.join(SAMPLES, "annotations.jsonl")])
    self.assertEqual([a.id for a in anns], ["street", "park-001", "field"])
    self.assertEqual(anns[0].boxes[0], ("fire hydrant", (0.203, 0.625, 0.297, 0.875)))
    self.assertEqual(anns[1].boxes[0], ("cat", (0.31, 0.402, 0.45, 0.55)))
    self.assertEqual(anns[2].boxes, ())

  def test_jsonl_reads_image_size_from_the_image_file(self):
    from PIL import Image
    with tempfile.TemporaryDirectory() as tmp:
      Image.new("RGB", (200, 100)).save(os.path.join(tmp, "a.png"))
      path = os.path.join(tmp, "ann.jsonl")
      with open(path, "w") as f:
        f.write(json.dumps({"image": "a.png", "captions": ["x"],
                            "boxes": [{"category": "dog", "bbox": [20, 10, 100, 100]}]}) + "\n")
      (ann,) = annotations.load([path], images_dir=tmp)
      self.assertEqual(ann.boxes, (("dog", (0.1, 0.1, 0.5, 1.0)),))
      with self.assertRaisesRegex(ValueError, r"ann\.jsonl:1: pixel boxes need"):
        annotations.load([path])

  def test_coco_joins_captions_and_instances(self):
    anns = annotations.load([os.path.join(SAMPLES, "coco_captions.json"),
                             os.path.join(SAMPLES, "coco_instances.json")])
    self.assertEqual([a.id for a in anns], ["000000000009", "000000000025"])  # 30: no captions
    self.assertEqual(anns[0].captions[0], "A plate with broccoli, rice and chicken.")
    # COCO boxes are [x, y, w, h] in pixels.
    self.assertEqual(anns[0].boxes, (("broccoli", (0.1, 0.1, 0.3, 0.3)),))
    self.assertEqual(anns[1].boxes, (("giraffe", (0.2, 0.05, 0.7, 1.0)),))

  def test_bad_record_names_file_line_and_field(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "bad.jsonl")
      with open(path, "w") as f:
        f.write(json.dumps({"image": "a.jpg", "captions": ["ok"]}) + "\n")
        f.write(json.dumps({"image": "b.jpg", "captions": []}) + "\n")
      with self.assertRaisesRegex(ValueError, r"bad\.jsonl:2: field 'captions'"):
        annotations.load([path])


class ContextAndPromptsTest(absltest.TestCase):

  def test_symbolic_context_matches_llava_layout(self):
    ann = annotations.ImageAnnotation(
        id="x", image="x.jpg", captions=("A dog.", "A brown dog on grass."),
        boxes=(("dog", (0.2871, 0.64, 0.5, 1.0)), ("frisbee", (0.0, 0.1234, 0.05, 0.2))))
    self.assertEqual(context.symbolic_context(ann),
                     "A dog.\nA brown dog on grass.\n\n"
                     "dog: [0.287, 0.64, 0.5, 1.0]\nfrisbee: [0.0, 0.123, 0.05, 0.2]")
    self.assertEqual(context.symbolic_context(ann, with_boxes=False),
                     "A dog.\nA brown dog on grass.")

  def test_each_generator_sends_system_then_few_shot_pairs_then_query(self):
    for kind, with_boxes in prompts.TYPES.items():
      prompt = prompts.load(kind)
      messages = prompt.messages("QUERY")
      self.assertGreaterEqual(len(prompt.examples), 2, kind)
      self.assertEqual([m["role"] for m in messages],
                       ["system"] + ["user", "assistant"] * len(prompt.examples) + ["user"])
      self.assertEqual(messages[-1]["content"], "QUERY")
      for example_context, example_response in prompt.examples:
        # Few-shot contexts have the same form as real ones: boxes only where the type uses them.
        self.assertEqual(": [" in example_context, with_boxes, kind)
        if kind == "detail":
          parse.parse_description(example_response)
        else:
          parse.check_content(parse.parse_qa(example_response))  # Our examples pass our checks.
    self.assertGreaterEqual(len(prompts.detail_instructions()), 5)


class ParseSavedResponsesTest(parameterized.TestCase):

  @parameterized.parameters(
      ("conv_ok", "conv", 3, None),
      ("conv_separators_missing", "conv", 2, None),
      ("conv_unbalanced", "conv", 0, "unbalanced_turns"),
      ("conv_empty_answer", "conv", 0, "empty_answer"),
      ("conv_refusal", "conv", 0, "unparseable"),
      ("conv_refusal_in_answer", "conv", 0, "refusal"),
      ("conv_repeated_question", "conv", 1, None),
      ("detail_ok", "detail", 1, None),
      ("detail_with_answer_tag", "detail", 1, None),
      ("detail_mentions_source", "detail", 0, "mentions_source"),
      ("reasoning_ok", "reasoning", 1, None),
      ("reasoning_markdown", "reasoning", 1, None),
      ("unparseable", "reasoning", 0, "unparseable"),
      ("reasoning_image_token_in_answer", "reasoning", 0, "invalid_record:image_token_in_answer"),
  )
  def test_saved_response(self, name, kind, num_pairs, reason):
    text = saved_response(name)
    job = generate.Job(kind, fake_annotations(1)[0])
    if reason is not None:
      with self.assertRaises(parse.Rejected) as cm:
        generate.to_record(job, text, seed=0)
      self.assertEqual(cm.exception.reason, reason)
      return
    record = generate.to_record(job, text, seed=0)
    turns = record["conversations"]
    self.assertLen(turns, 2 * num_pairs)
    self.assertEqual([t["from"] for t in turns], ["human", "gpt"] * num_pairs)
    self.assertTrue(turns[0]["value"].startswith("<image>\n"))
    self.assertEqual(sum(t["value"].count("<image>") for t in turns), 1)
    for turn in turns:
      self.assertNotRegex(turn["value"], r"(?i)^(question|answer)\s*:|===|\*\*")
    self.assertEqual(record["image"], "img0.jpg")

  def test_detail_instruction_is_seeded_per_record(self):
    job = generate.Job("detail", fake_annotations(1)[0])
    text = saved_response("detail_ok")
    first = generate.to_record(job, text, seed=0)["conversations"][0]["value"]
    self.assertEqual(first, generate.to_record(job, text, seed=0)["conversations"][0]["value"])
    wordings = {generate.to_record(job, text, seed=s)["conversations"][0]["value"]
                for s in range(20)}
    self.assertGreater(len(wordings), 1)

  def test_dedup_key_ignores_case_and_punctuation(self):
    a = parse.to_record("a", "a.jpg", [("What is it?", "A cat.")])
    b = parse.to_record("b", "b.jpg", [("what is it", "a  cat!")])
    c = parse.to_record("c", "c.jpg", [("What is it?", "A dog.")])
    self.assertEqual(parse.dedup_key(a), parse.dedup_key(b))
    self.assertNotEqual(parse.dedup_key(a), parse.dedup_key(c))


class ClientTest(absltest.TestCase):

  def make_client(self, server, budget=None, **kw):
    self.sleeps = []
    return client_lib.ChatClient(api_base=server.api_base, model="m", api_key="sk-test",
                                 budget=client_lib.RequestBudget(budget),
                                 sleep=self.sleeps.append, **kw)

  def test_retries_429_and_5xx_with_growing_backoff(self):
    with fake_openai.FakeOpenAI(lambda r: "hello", fail_first=[429, 503, 500]) as server:
      client = self.make_client(server, backoff_s=1.0)
      self.assertEqual(client.complete([{"role": "user", "content": "hi"}]), "hello")
    self.assertLen(server.requests, 4)
    self.assertEqual(client.budget.used, 4)
    self.assertLen(self.sleeps, 3)
    for attempt, delay in enumerate(self.sleeps):  # Jittered exponential backoff.
      self.assertBetween(delay, 0.5 * 2**attempt, 2**attempt)
    self.assertEqual(server.headers[0]["Authorization"], "Bearer sk-test")
    self.assertEqual(server.requests[0]["model"], "m")

  def test_retry_after_header_is_honoured(self):
    with fake_openai.FakeOpenAI(lambda r: "ok", fail_first=[429], retry_after="7") as server:
      client = self.make_client(server)
      client.complete([{"role": "user", "content": "hi"}])
    self.assertEqual(self.sleeps, [7.0])

  def test_client_errors_are_not_retried_and_retries_are_bounded(self):
    with fake_openai.FakeOpenAI(lambda r: "ok", fail_first=[400]) as server:
      with self.assertRaisesRegex(client_lib.ApiError, "HTTP 400"):
        self.make_client(server).complete([])
      self.assertLen(server.requests, 1)
    with fake_openai.FakeOpenAI(lambda r: "ok", fail_first=[503] * 10) as server:
      with self.assertRaisesRegex(client_lib.ApiError, "gave up after 3 attempts"):
        self.make_client(server, max_retries=2).complete([])
      self.assertLen(server.requests, 3)

  def test_budget_counts_every_attempt(self):
    with fake_openai.FakeOpenAI(lambda r: "ok", fail_first=[429, 429]) as server:
      client = self.make_client(server, budget=2)
      with self.assertRaises(client_lib.BudgetExhausted):
        client.complete([])
      self.assertLen(server.requests, 2)

  def test_concurrency_limit(self):
    with fake_openai.FakeOpenAI(lambda r: "ok", delay_s=0.1) as server:
      client = self.make_client(server)
      results = list(client_lib.map_concurrently(
          lambda i: client.complete([{"role": "user", "content": str(i)}]), range(8), 3))
    self.assertLen(results, 8)
    self.assertTrue(all(error is None for _, _, error in results))
    self.assertEqual(server.max_in_flight, 3)

  def test_connection_refused_is_an_api_error(self):
    client = client_lib.ChatClient(api_base="http://127.0.0.1:9/v1", model="m", max_retries=1,
                                   sleep=lambda s: None)
    with self.assertRaisesRegex(client_lib.ApiError, "gave up after 2 attempts"):
      client.complete([])


class GenerateTest(absltest.TestCase):

  def run_generate(self, server, out, anns, types=("conv", "detail", "reasoning"), budget=None,
                   images_dir=None, concurrency=2):
    client = client_lib.ChatClient(api_base=server.api_base, model="m",
                                   budget=client_lib.RequestBudget(budget), max_retries=2,
                                   sleep=lambda s: None)
    return generate.run(anns, list(types), client, out, images_dir=images_dir,
                        concurrency=concurrency,
                        progress=False)

  def test_counts_rejections_and_duplicates_per_type(self):
    replies = {"img0": "conv_ok", "img1": "conv_ok", "img2": "conv_refusal_in_answer",
               "img3": "conv_unbalanced", "img4": "unparseable"}

    def reply(request):
      image = request["messages"][-1]["content"].split()[2].rstrip(".")
      return saved_response(replies[f"img{image}"])

    with tempfile.TemporaryDirectory() as out, fake_openai.FakeOpenAI(reply) as server:
      stats = self.run_generate(server, out, fake_annotations(5), types=["conv"],
                                concurrency=1)  # In order: img1 is the duplicate.
      self.assertEqual(stats["conv"].total, 1)  # img1 repeats img0's conversation.
      self.assertEqual(dict(stats["conv"].rejected), {
          "duplicate": 1, "refusal": 1, "unbalanced_turns": 1, "unparseable": 1})
      with open(os.path.join(out, "stats.json")) as f:
        self.assertEqual(json.load(f)["conv"]["rejected"]["duplicate"], 1)
      with open(os.path.join(out, generate.MERGED_FILE)) as f:
        (record,) = json.load(f)
      self.assertEqual(record["id"], "img0-conv")
      self.assertRegex(generate.format_table(stats),
                       r"\nconv +1 +1 +0 +4 +0 +0  duplicate=1, refusal=1")

  def test_all_types_write_llava_records(self):
    with tempfile.TemporaryDirectory() as out, fake_openai.FakeOpenAI(good_reply) as server:
      stats = self.run_generate(server, out, fake_annotations(3))
      self.assertEqual({k: s.total for k, s in stats.items()},
                       {"conv": 3, "detail": 3, "reasoning": 3})
      with open(os.path.join(out, generate.MERGED_FILE)) as f:
        records = json.load(f)
      # Every record written passes the training pipeline's reader and checks, images included.
      from PIL import Image
      for i in range(3):
        Image.new("RGB", (32, 24), (i, 0, 0)).save(os.path.join(out, f"img{i}.jpg"))
      read = records_lib.read_records(os.path.join(out, generate.MERGED_FILE))
      self.assertLen(read, 9)
      for rec in read:
        self.assertEqual(records_lib.check_record(rec, image_dir=out, max_images=1), [])
    self.assertLen({r["id"] for r in records}, 9)
    for r in records:
      self.assertEqual(set(r), {"id", "image", "conversations"})
      self.assertTrue(r["conversations"][0]["value"].startswith("<image>\n"))
    # Conversation prompts see captions only; the other two also see boxes.
    by_kind = {kind_of(req): req["messages"][-1]["content"] for req in server.requests}
    self.assertNotIn("cat: [0.1, 0.2, 0.3, 0.4]", by_kind["conv"])
    self.assertIn("cat: [0.1, 0.2, 0.3, 0.4]", by_kind["detail"])
    self.assertIn("cat: [0.1, 0.2, 0.3, 0.4]", by_kind["reasoning"])

  def test_budget_then_resume_sends_each_request_once(self):
    anns = fake_annotations(4)
    with tempfile.TemporaryDirectory() as out, fake_openai.FakeOpenAI(good_reply) as server:
      stats = self.run_generate(server, out, anns, types=["conv", "detail"], budget=3)
      self.assertEqual(sum(s.new for s in stats.values()), 3)
      self.assertEqual(sum(s.not_sent for s in stats.values()), 5)
      self.assertLen(server.requests, 3)
      stats = self.run_generate(server, out, anns, types=["conv", "detail"])
      self.assertEqual(sum(s.skipped for s in stats.values()), 3)
      self.assertEqual(sum(s.new for s in stats.values()), 5)
      self.assertLen(server.requests, 8)
      with open(os.path.join(out, generate.MERGED_FILE)) as f:
        self.assertLen({r["id"] for r in json.load(f)}, 8)

  def test_failed_requests_are_retried_on_the_next_run(self):
    with tempfile.TemporaryDirectory() as out:
      with fake_openai.FakeOpenAI(good_reply, fail_first=[500] * 3) as server:
        stats = self.run_generate(server, out, fake_annotations(2), types=["conv"],
                                  concurrency=1)  # The first request takes all 3 failures.
      self.assertEqual((stats["conv"].failed, stats["conv"].total), (1, 1))
      with fake_openai.FakeOpenAI(good_reply) as server:
        stats = self.run_generate(server, out, fake_annotations(2), types=["conv"])
      self.assertEqual((stats["conv"].failed, stats["conv"].total), (0, 2))
      self.assertLen(server.requests, 1)

  def test_request_rejected_by_the_endpoint_is_journaled_but_404_is_retried(self):
    with tempfile.TemporaryDirectory() as out:
      with fake_openai.FakeOpenAI(good_reply, fail_first=[400, 404]) as server:
        stats = self.run_generate(server, out, fake_annotations(3), types=["conv"],
                                  concurrency=1)
      self.assertEqual(dict(stats["conv"].rejected), {"http_400": 1})
      self.assertEqual((stats["conv"].failed, stats["conv"].total), (1, 1))
      with fake_openai.FakeOpenAI(good_reply) as server:
        stats = self.run_generate(server, out, fake_annotations(3), types=["conv"])
      self.assertEqual((stats["conv"].skipped, stats["conv"].total), (2, 2))
      self.assertLen(server.requests, 1)  # Only the 404 is sent again.

  def test_responses_cut_off_by_max_tokens_are_rejected(self):
    with tempfile.TemporaryDirectory() as out, \
        fake_openai.FakeOpenAI(lambda r: (good_reply(r), "length")) as server:
      stats = self.run_generate(server, out, fake_annotations(2), types=["detail"])
    self.assertEqual((stats["detail"].total, dict(stats["detail"].rejected)),
                     (0, {"truncated": 2}))

  def test_repeated_image_ids_are_sent_once(self):
    with tempfile.TemporaryDirectory() as out, fake_openai.FakeOpenAI(good_reply) as server:
      stats = self.run_generate(server, out, fake_annotations(2) * 2, types=["conv"])
      self.assertEqual((stats["conv"].total, dict(stats["conv"].rejected)),
                       (2, {"repeated_image_id": 2}))
      self.assertLen(server.requests, 2)

  def test_missing_images_are_counted_not_sent(self):
    with tempfile.TemporaryDirectory() as out, fake_openai.FakeOpenAI(good_reply) as server:
      open(os.path.join(out, "img1.jpg"), "wb").close()
      stats = self.run_generate(server, out, fake_annotations(2), types=["conv"],
                                images_dir=out)
      self.assertEqual(stats["conv"].rejected["missing_image"], 1)
      self.assertLen(server.requests, 1)

  def test_cli_resumes_after_being_killed(self):
    anns = fake_annotations(12)
    with tempfile.TemporaryDirectory() as tmp, \
        fake_openai.FakeOpenAI(good_reply, delay_s=0.05) as server:
      ann_path = os.path.join(tmp, "ann.jsonl")
      with open(ann_path, "w") as f:
        for a in anns:
          f.write(json.dumps({"image": a.image, "captions": list(a.captions)}) + "\n")
      out = os.path.join(tmp, "out")
      cmd = [sys.executable, "-m", "llava_jax.datagen", f"--annotations={ann_path}",
             f"--out={out}", "--types=conv", f"--api_base={server.api_base}", "--model=m",
             "--concurrency=1", "--api_key_env=LLAVA_JAX_TEST_UNSET_KEY"]
      proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
      journal_path = os.path.join(out, "conv.jsonl")
      deadline = time.time() + 60
      while time.time() < deadline and line_count(journal_path) < 3:
        time.sleep(0.02)
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=10)
      proc.stdout.close()
      proc.stderr.close()
      written_before = line_count(journal_path)
      self.assertBetween(written_before, 3, 11)
      with open(journal_path, "a") as f:  # A write cut short by the crash.
        f.write('{"id": "img11-conv", "image": "img1')
      result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
      self.assertEqual(result.returncode, 0, result.stderr[-2000:])
      stats = json.loads(result.stdout.strip().splitlines()[-1])["conv"]
      self.assertEqual(stats["skipped"], written_before)
      self.assertEqual(stats["total"], 12)
      ids = [r["id"] for r in journal.Journal(journal_path).records]
      self.assertCountEqual(ids, [f"img{i}-conv" for i in range(12)])
      # At most one request was lost in flight when the first run was killed.
      self.assertBetween(len(server.requests), 12, 13)


class RealServerTest(absltest.TestCase):
  """Over real HTTP against this project's OpenAI-compatible server with a tiny random model:
  its text is nonsense, so this shows that failures are parsed, counted and never crash."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    from llava_jax.infer import api
    from llava_jax.serving import app as serving
    cls.tmp = tempfile.mkdtemp()
    model = api.load(tiny.write_model_dir(os.path.join(cls.tmp, "model")))
    # One request at a time: a single decode batch shape, so generation compiles once.
    settings = serving.Settings(model_name="tiny", max_batch=1)
    cls.server = serving.Running(serving.make_app(model, settings), settings)
    cls.api_base = cls.server.url + "/v1"
    # Short prompts so that system message + one example + query fit the tiny 512-token context.
    cls.prompts_dir = os.path.join(cls.tmp, "prompts")
    for kind in prompts.TYPES:
      os.makedirs(os.path.join(cls.prompts_dir, kind))
      for name, text in [("system_message.txt", "Write about the picture."),
                         ("000_context.txt", "A dog.\n\ndog: [0.1, 0.2, 0.5, 0.9]"),
                         ("000_response.txt", "Question:\nWhat is it?\n===\nAnswer:\nA dog.")]:
        with open(os.path.join(cls.prompts_dir, kind, name), "w") as f:
          f.write(text)
    shutil.copy(os.path.join(prompts.PROMPTS_DIR, "detail", "instructions.txt"),
                os.path.join(cls.prompts_dir, "detail"))

  @classmethod
  def tearDownClass(cls):
    cls.server.stop()
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_generation_against_the_real_server(self):
    anns = annotations.load([os.path.join(SAMPLES, "annotations.jsonl")])[:2]
    client = client_lib.ChatClient(api_base=self.api_base, model="tiny", max_retries=1,
                                   sleep=lambda s: None)
    out = os.path.join(self.tmp, "out")
    stats = generate.run(anns, list(prompts.TYPES), client, out, concurrency=2, max_tokens=12,
                         temperature=0.0, prompts_dir=self.prompts_dir, progress=False)
    self.assertEqual(set(stats), set(prompts.TYPES))
    for kind, s in stats.items():
      self.assertEqual(s.failed + s.not_sent, 0, kind)
      self.assertEqual(s.new + sum(s.rejected.values()), 2, kind)
    # Random weights rarely stop within 12 tokens, so most answers come back cut off
    # ('truncated'); the rest fail to parse. Either way every request is answered with text
    # and journaled: accepted as a valid record, or rejected with the server's text kept.
    qa_reasons = {"unparseable", "unbalanced_turns", "empty_question", "empty_answer", "refusal",
                  "mentions_source", "truncated"}
    texts = []
    for kind in prompts.TYPES:
      accepted = journal.Journal(os.path.join(out, f"{kind}.jsonl")).records
      rejected = journal.Journal(os.path.join(out, f"{kind}.rejected.jsonl")).records
      self.assertLen(accepted + rejected, 2, kind)
      self.assertLen(accepted, stats[kind].total, kind)
      for r in rejected:
        if kind != "detail":
          self.assertIn(r["reason"], qa_reasons | {"duplicate"}, kind)
        self.assertIsInstance(r["response"], str, r)
        texts.append(r["response"])
      texts.extend(str(a) for a in accepted)
    # Random weights may greedily repeat a token that decodes to nothing, so one reply can be
    # empty; all of them empty means nothing was generated.
    self.assertTrue(any(t.strip() for t in texts), texts)
    merged = records_lib.read_records(os.path.join(out, generate.MERGED_FILE))
    self.assertLen(merged, sum(s.total for s in stats.values()))
    for rec in merged:
      self.assertEqual(records_lib.check_record(rec), [])
    with open(os.path.join(out, "stats.json")) as f:
      self.assertEqual(set(json.load(f)), set(prompts.TYPES))

    # Our full few-shot prompts do not fit the tiny model's context: the server answers 400,
    # and each request is journaled as rejected (not retried, not fatal).
    out_long = os.path.join(self.tmp, "out_long")
    stats = generate.run(anns, ["reasoning"], client, out_long, concurrency=2, max_tokens=12,
                         progress=False)
    self.assertEqual(dict(stats["reasoning"].rejected), {"http_400": 2})
    with open(os.path.join(out_long, "reasoning.rejected.jsonl")) as f:
      self.assertIn("context", f.readline())

  def test_evaluation_answers_through_the_real_server(self):
    """The evaluators' --api_base path: an image sent as a data URL, no model name needed."""
    from llava_jax.eval import answering
    answer_fn = answering.server_answer_fn(
        client_lib.ChatClient(api_base=self.api_base, model=None), max_tokens=8)
    image = os.path.join(REPO, "data", "demo", "images", "shapes_000.png")
    answers = answering.answer_all(["What is shown?", "Say hi."], [image, None], answer_fn,
                                   progress=False)
    self.assertLen(answers, 2)
    self.assertTrue(all(isinstance(a, str) for a in answers))


if __name__ == "__main__":
  absltest.main()
