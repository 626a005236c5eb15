"""The OpenAI-compatible server over real HTTP on 127.0.0.1 (httpx, sockets, the openai client)."""

import asyncio
import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import httpx
import numpy as np
import openai
from PIL import Image

import llava_hf_fixtures as fx
from llava_jax.serving import app as serving
from llava_jax.serving import protocol
import tiny

QUESTION = "What is in the image?"
REPO = tiny.REPO


def _png(seed: int, size=(40, 30)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def _data_url(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode()


def _user(text: str, image_url: str | None = None) -> list[dict]:
  parts = [{"type": "text", "text": text}]
  if image_url:
    parts.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
  return [{"role": "user", "content": parts}]


def _start(model, **kwargs) -> serving.Running:
  settings = serving.Settings(model_name="tiny-llava", **kwargs)
  return serving.Running(serving.make_app(model, settings), settings)


def _post(url: str, body, timeout=120, headers=None) -> tuple[int, dict]:
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  r = httpx.post(url + "/v1/chat/completions", content=data, timeout=timeout,
                 headers={"Content-Type": "application/json", **(headers or {})})
  return r.status_code, r.json()


class ServeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    _, cls.model = fx.imported_llava(cls.tmp, seed=1)
    cls.images = [_png(i) for i in range(4)]
    cls.root = cls.tmp / "images"
    cls.root.mkdir()
    (cls.root / "image.png").write_bytes(cls.images[0])
    (cls.root / "notes.txt").write_text("not an image")
    (cls.tmp / "secret.png").write_bytes(cls.images[1])
    # What the library says for each image (greedy): every served answer must equal it.
    cls.expected = [cls.model.chat(im, QUESTION, max_new_tokens=12) for im in cls.images]
    limits = protocol.Limits(max_image_bytes=20_000, max_image_pixels=100_000,
                             image_root=str(cls.root))
    cls.server = _start(cls.model, max_batch=4, limits=limits, max_body_bytes=200_000)
    cls.url = cls.server.url

  @classmethod
  def tearDownClass(cls):
    cls.server.stop()
    super().tearDownClass()

  def test_openai_client_completion_stream_usage_and_models(self):
    client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused")
    self.assertEqual([m.id for m in client.models.list()], ["tiny-llava"])
    messages = _user(QUESTION, _data_url(self.images[1]))
    reply = client.chat.completions.create(model="tiny-llava", messages=messages,
                                           temperature=0, max_tokens=12)
    self.assertEqual(reply.choices[0].message.content, self.expected[1])
    self.assertIn(reply.choices[0].finish_reason, ("stop", "length"))
    self.assertGreater(reply.usage.prompt_tokens, 16)
    self.assertTrue(reply.system_fingerprint.startswith("fp_"))
    chunks = list(client.chat.completions.create(
        model="tiny-llava", messages=messages, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    self.assertEqual(text, self.expected[1])
    self.assertGreater(len(chunks), 3)  # streamed in pieces, not one blob
    self.assertIsNotNone(chunks[-2].choices[0].finish_reason)
    self.assertEqual(chunks[-1].choices, [])  # the usage chunk
    self.assertEqual(chunks[-1].usage.completion_tokens, reply.usage.completion_tokens)
    self.assertEqual({c.system_fingerprint for c in chunks}, {reply.system_fingerprint})

  def test_logprobs_of_generated_tokens(self):
    client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="tiny-llava", messages=_user(QUESTION, _data_url(self.images[2])), temperature=0,
        max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    self.assertLen(content, reply.usage.completion_tokens - (
        reply.choices[0].finish_reason == "stop"))
    for entry in content:
      self.assertLen(entry.top_logprobs, 3)
      self.assertEqual(entry.top_logprobs[0].token, entry.token)  # greedy: the top token
      self.assertAlmostEqual(entry.top_logprobs[0].logprob, entry.logprob, places=4)
      self.assertLessEqual(entry.logprob, 0.0)
    self.assertEqual("".join(e.token for e in content), reply.choices[0].message.content)

  def test_messages_reach_the_prompt_builder_in_client_order(self):
    seen = []
    model = tiny.RecordingModel(self.model, seen)
    server = _start(model)
    try:
      status, body = _post(server.url, {"max_tokens": 2, "messages": [
          {"role": "system", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                       {"type": "image_url",
                                        "image_url": {"url": _data_url(self.images[0])}}]}]})
    finally:
      server.stop()
    self.assertEqual(status, 200, body)
    (messages,) = seen
    self.assertEqual([m.role for m in messages], ["system", "user"])
    self.assertEqual(messages[0].parts, ["Be brief."])
    self.assertEqual(messages[1].parts[0], "Look:")
    self.assertEqual(messages[1].parts[1].shape, (40, 30, 3))  # decoded before the encoder

  def test_burst_of_200_is_answered_or_refused_with_retry_after(self):
    server = _start(self.model, max_batch=4, queue_size=4, max_pending=12)
    body = {"max_tokens": 3, "temperature": 0, "messages": _user("hi")}

    async def burst():
      limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
      async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        return await asyncio.gather(*[client.post(server.url + "/v1/chat/completions",
                                                  json=body) for _ in range(200)])
    try:
      replies = asyncio.run(burst())  # a reset connection would raise here
    finally:
      server.stop()
    codes = [r.status_code for r in replies]
    self.assertEqual(set(codes) - {200, 503}, set(), codes)
    self.assertGreater(codes.count(200), 0)
    busy = [r for r in replies if r.status_code == 503]
    self.assertNotEmpty(busy)
    for r in busy:
      self.assertEqual(r.headers["Retry-After"], "1")
      self.assertEqual(r.json()["error"]["code"], "server_busy")

  def test_body_limit(self):
    started = time.monotonic()
    status, body = _post(self.url, {"messages": _user("word " * 100_000)})  # 500 kB
    self.assertEqual((status, body["error"]["code"]), (413, "request_too_large"))
    self.assertLess(time.monotonic() - started, 5)

  def test_image_byte_and_pixel_limits(self):
    big = _png(9, size=(100, 100))  # 30 kB: over the 20 kB image limit, under the body limit
    status, body = _post(self.url, {"messages": _user(QUESTION, _data_url(big))})
    self.assertEqual((status, body["error"]["code"]), (413, "image_too_large"))
    out = io.BytesIO()
    Image.new("RGB", (2000, 2000)).save(out, format="PNG")  # small file, 4 Mpx > 100 kpx
    status, body = _post(self.url, {"messages": _user(QUESTION, _data_url(out.getvalue()))})
    self.assertEqual(status, 413)
    self.assertIn("2000x2000", body["error"]["message"])

  def test_thin_image_costs_no_time_in_pad_mode(self):
    # 30000x1: squaring it before the resize took 37 s and 6 GB (issue 15).
    pad_model = dataclasses.replace(self.model, image_aspect="pad")
    server = _start(pad_model, limits=protocol.Limits(max_image_pixels=10**6))
    out = io.BytesIO()
    Image.new("RGB", (30000, 1), (200, 10, 10)).save(out, format="PNG")
    try:
      started = time.monotonic()
      status, body = _post(server.url, {"max_tokens": 2,
                                        "messages": _user(QUESTION, _data_url(out.getvalue()))})
      seconds = time.monotonic() - started
    finally:
      server.stop()
    self.assertIn(status, (200, 400), body)
    self.assertLess(seconds, 10)  # includes compiling generation for this server

  def test_local_paths_only_under_the_root_with_one_message(self):
    status, body = _post(self.url, {"temperature": 0, "max_tokens": 12,
                                    "messages": _user(QUESTION, "image.png")})
    self.assertEqual(status, 200, body)
    self.assertEqual(body["choices"][0]["message"]["content"], self.expected[0])
    messages = set()
    for path in ["notes.txt", "missing.png", "../secret.png", str(self.tmp / "secret.png"),
                 "file:///etc/passwd", "."]:
      status, body = _post(self.url, {"messages": _user(QUESTION, path)})
      self.assertEqual(status, 400, path)
      messages.add(body["error"]["message"])
    self.assertLen(messages, 1)
    server = _start(self.model)  # no image root: local paths are off
    try:
      status, body = _post(server.url, {"messages": _user(QUESTION, "image.png")})
    finally:
      server.stop()
    self.assertEqual((status, body["error"]["code"]), (400, "local_images_disabled"))

  def test_api_key_and_health(self):
    server = _start(self.model, api_key="s3cret")
    try:
      self.assertEqual(httpx.get(server.url + "/health").json()["status"], "ok")
      request = {"max_tokens": 2, "messages": _user("hi")}
      status, body = _post(server.url, request)
      self.assertEqual((status, body["error"]["code"]), (401, "invalid_api_key"))
      self.assertEqual(_post(server.url, request, headers={"Authorization": "Bearer nope"})[0],
                       401)
      client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret")
      self.assertEqual(client.chat.completions.create(model="tiny-llava", **request)
                       .choices[0].finish_reason, "length")
    finally:
      server.stop()

  def test_half_sent_requests_are_closed_after_the_header_timeout(self):
    server = _start(self.model, header_timeout_s=1.0, body_timeout_s=1.0)
    try:
      half = [socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
              for _ in range(20)]
      for s in half[:10]:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never end
      for s in half[10:]:  # headers complete, body never comes
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
      self.assertEqual(httpx.get(server.url + "/health").status_code, 200)
      for s in half:
        s.settimeout(10)
      time.sleep(1.5)
      for s in half[:10]:
        self.assertEqual(s.recv(100), b"")  # closed by the server
      for s in half[10:]:
        self.assertIn(b" 408 ", s.recv(1000))
    finally:
      for s in half:
        s.close()
      server.stop()

  def test_bad_content_length_is_a_400_not_a_traceback(self):
    with socket.create_connection(("127.0.0.1", int(self.url.rsplit(":", 1)[1]))) as s:
      s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
      s.settimeout(10)
      self.assertIn(b" 400 ", s.recv(1000))

  def test_validation_errors_and_refused_fields(self):
    def post(**overrides):
      body = {"model": "tiny-llava", "max_tokens": 8, "messages": _user(QUESTION)}
      body.update(overrides)
      return _post(self.url, body)

    status, body = _post(self.url, b"{not json")
    self.assertEqual((status, body["error"]["code"]), (400, "invalid_json"))
    self.assertEqual(post(model="gpt-4")[1]["error"]["code"], "model_not_found")
    self.assertEqual(post(messages=[])[0], 400)
    self.assertEqual(post(messages=[{"role": "robot", "content": "x"}])[0], 400)
    self.assertEqual(post(temperature=7)[0], 400)
    self.assertEqual(post(top_p="high")[1]["error"]["code"], "invalid_type")
    for field, value in [("tools", []), ("response_format", {"type": "json_object"}), ("n", 2),
                         ("presence_penalty", 0.5), ("logit_bias", {"5": 1}),
                         ("frequency_penalty", 1), ("stream_options", {"include_usage": True})]:
      status, body = post(**{field: value})
      self.assertEqual((status, body["error"]["param"]), (400, field), body)
      self.assertIsInstance(body["error"]["code"], str)
    status, body = post(best_of=3)
    self.assertEqual((status, body["error"]["code"]), (400, "unknown_parameter"))
    status, body = post(messages=_user("word " * 300))
    self.assertEqual((status, body["error"]["code"]), (400, "context_length_exceeded"))
    status, body = post(messages=_user(QUESTION, "data:image/png;base64,@@@"))
    self.assertEqual(status, 400)
    status, body = post(messages=_user(QUESTION, _data_url(b"not an image")))
    self.assertEqual((status, body["error"]["code"]), (400, "invalid_image"))
    # The fields the README's table lists are exactly the ones parse_request knows.
    readme = (REPO / "README.md").read_text()
    for field in list(protocol.FIELDS) + list(protocol.REFUSED):
      self.assertIn(f"| `{field}` |", readme)

  def test_stop_strings(self):
    want = self.expected[2]
    cut = want[len(want) // 2:len(want) // 2 + 2]
    status, body = _post(self.url, {"temperature": 0, "max_tokens": 12, "stop": [cut],
                                    "messages": _user(QUESTION, _data_url(self.images[2]))})
    self.assertEqual(status, 200, body)
    self.assertEqual(body["choices"][0]["message"]["content"], want[:want.index(cut)])
    self.assertEqual(body["choices"][0]["finish_reason"], "stop")

  def test_static_scheduler_gives_the_same_answers(self):
    server = _start(self.model, scheduler="static", max_batch=4)
    try:
      with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda im: _post(server.url, {
            "temperature": 0, "max_tokens": 12, "messages": _user(QUESTION, _data_url(im))}),
                                self.images))
    finally:
      server.stop()
    for (status, body), want in zip(results, self.expected):
      self.assertEqual(status, 200, body)
      self.assertEqual(body["choices"][0]["message"]["content"], want)

  def test_lmms_eval_payloads_64_at_once(self):
    # lmms-eval's OpenAI model: text before the image, max_tokens 1024, temperature 0, 64 at once.
    server = _start(self.model, max_batch=16, queue_size=64, max_pending=64)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0)

    def ask(i):
      content = [{"type": "text", "text": f"Question {i % 2}: what is shown?"},
                 {"type": "image_url", "image_url": {"url": _data_url(self.images[i % 2])}}]
      reply = client.chat.completions.create(model="tiny-llava", max_tokens=1024, temperature=0,
                                             messages=[{"role": "user", "content": content}])
      return reply.choices[0].message.content, reply.choices[0].finish_reason
    try:
      with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
      alone = [ask(0), ask(1)]
    finally:
      server.stop()
    for i, answer in enumerate(answers):
      self.assertEqual(answer, alone[i % 2])  # the batch does not change an answer

  def test_sigterm_finishes_in_flight_requests_then_exits(self):
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "llava_jax.serve", "--port=0", "--model_name=cli-llava"]
    missing = subprocess.run(cmd + ["--ckpt=/no/such/dir"], capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=120)
    self.assertEqual(missing.returncode, 2)
    self.assertIn("checkpoint not found: /no/such/dir", missing.stderr)
    proc = subprocess.Popen(cmd + [f"--ckpt={self.tmp / 'ours'}"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
      banner = proc.stdout.readline()  # "serving 'cli-llava' on http://127.0.0.1:PORT/v1"
      self.assertIn("serving 'cli-llava' on http://127.0.0.1:", banner)
      url = banner.split()[-1].removesuffix("/v1")
      lines = []
      with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
          "temperature": 0, "max_tokens": 12, "stream": True,
          "messages": _user(QUESTION, _data_url(self.images[3]))}) as response:
        for line in response.iter_lines():
          if not lines:
            proc.send_signal(signal.SIGTERM)  # mid-stream: this request must still finish
          lines.append(line)
      text = "".join(json.loads(l[6:])["choices"][0]["delta"].get("content") or ""
                     for l in lines if l.startswith("data: {"))
      self.assertIn("data: [DONE]", lines)
      self.assertEqual(text, self.expected[3])
      self.assertEqual(proc.wait(timeout=60), 0)
      with self.assertRaises(httpx.ConnectError):
        httpx.get(url + "/health")
    finally:
      proc.kill()


if __name__ == "__main__":
  absltest.main()
