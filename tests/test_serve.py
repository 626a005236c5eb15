"""The OpenAI-compatible server over real HTTP on 127.0.0.1 (urllib and the openai client)."""

import base64
import concurrent.futures
import http.client
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

from absl.testing import absltest
import numpy as np
import openai
from PIL import Image

import llava_hf_fixtures as fx
from llava_jax import serve

QUESTION = "What is in the image?"
REPO = pathlib.Path(__file__).resolve().parent.parent


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


def _start(model, **kwargs):
  server = serve.make_server(model, "127.0.0.1", 0, model_name="tiny-llava", **kwargs)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}"


def _count_queued(worker) -> threading.Semaphore:
  """Released once per job the worker accepts, so tests wait on it with a deadline."""
  queued = threading.Semaphore(0)
  submit = worker.submit

  def counting_submit(job):
    submit(job)   # raises (503) when the queue is full: not counted
    queued.release()

  worker.submit = counting_submit
  return queued


def _wait_queued(queued: threading.Semaphore, count: int, timeout: float = 120):
  for i in range(count):
    if not queued.acquire(timeout=timeout):
      raise AssertionError(f"only {i} of {count} requests reached the queue in {timeout} s")


def _post(url: str, body, timeout=120) -> tuple[int, dict]:
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  request = urllib.request.Request(url + "/v1/chat/completions", data=data,
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


class ServeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    _, cls.model = fx.imported_llava(cls.tmp, seed=1)
    cls.images = [_png(i) for i in range(4)]
    cls.image_path = cls.tmp / "image.png"
    cls.image_path.write_bytes(cls.images[0])
    # What the library says for each image (greedy): every served answer must equal it.
    cls.expected = [cls.model.chat(im, QUESTION, max_new_tokens=12) for im in cls.images]
    cls.server, cls.url = _start(cls.model, max_batch=4, max_image_bytes=20_000)

  @classmethod
  def tearDownClass(cls):
    cls.server.shutdown()
    cls.server.service.worker.stop()
    super().tearDownClass()

  def test_openai_client_completion_stream_and_models(self):
    client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused")
    self.assertEqual([m.id for m in client.models.list()], ["tiny-llava"])
    messages = _user(QUESTION, _data_url(self.images[1]))
    reply = client.chat.completions.create(model="tiny-llava", messages=messages,
                                           temperature=0, max_tokens=12)
    self.assertEqual(reply.choices[0].message.content, self.expected[1])
    self.assertIn(reply.choices[0].finish_reason, ("stop", "length"))
    self.assertGreater(reply.usage.prompt_tokens, 16)
    chunks = list(client.chat.completions.create(model="tiny-llava", messages=messages,
                                                 temperature=0, max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    self.assertEqual(text, self.expected[1])
    self.assertGreater(len(chunks), 2)  # streamed in pieces, not one blob
    self.assertIsNotNone(chunks[-1].choices[0].finish_reason)

  def test_local_image_path(self):
    status, body = _post(self.url, {"model": "tiny-llava", "temperature": 0, "max_tokens": 12,
                                    "messages": _user(QUESTION, str(self.image_path))})
    self.assertEqual(status, 200, body)
    self.assertEqual(body["choices"][0]["message"]["content"], self.expected[0])

  def test_concurrent_requests_are_batched(self):
    server, url = _start(self.model, max_batch=4, start_worker=False)
    queued = _count_queued(server.service.worker)
    try:
      with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_post, url, {"temperature": 0, "max_tokens": 12,
                                            "messages": _user(QUESTION, _data_url(im))})
                   for im in self.images]
        _wait_queued(queued, 4)   # all four wait before decoding starts
        server.service.worker.start()
        results = [f.result() for f in futures]
    finally:
      server.shutdown()
      server.service.worker.stop()
    self.assertEqual(server.service.worker.batch_sizes, [4])
    for (status, body), want in zip(results, self.expected):
      self.assertEqual(status, 200, body)
      self.assertEqual(body["choices"][0]["message"]["content"], want)

  def test_full_queue_returns_503(self):
    server, url = _start(self.model, queue_size=1, start_worker=False)
    queued = _count_queued(server.service.worker)
    request = {"max_tokens": 4, "messages": _user("hi")}
    try:
      def wait_in_queue():  # never answered: the worker is not running
        try:
          _post(url, request, timeout=5)
        except (OSError, http.client.HTTPException):
          pass

      waiting = threading.Thread(target=wait_in_queue, daemon=True)
      waiting.start()
      _wait_queued(queued, 1)
      status, body = _post(url, request)
    finally:
      server.shutdown()
      server.service.worker.stop()
    self.assertEqual(status, 503)
    self.assertIn("queue is full", body["error"]["message"])

  def test_validation_errors(self):
    def post(**overrides):
      body = {"model": "tiny-llava", "max_tokens": 8, "messages": _user(QUESTION)}
      body.update(overrides)
      return _post(self.url, body)

    status, body = _post(self.url, b"{not json")
    self.assertEqual((status, "not valid JSON" in body["error"]["message"]), (400, True))
    self.assertEqual(post(model="gpt-4")[0], 404)
    self.assertEqual(post(messages=[])[0], 400)
    self.assertEqual(post(messages=[{"role": "robot", "content": "x"}])[0], 400)
    self.assertEqual(post(temperature=7)[0], 400)
    self.assertEqual(post(top_p="high")[0], 400)
    status, body = post(max_tokens=100_000)
    self.assertEqual(status, 400)
    self.assertIn("max_tokens", body["error"]["message"])
    status, body = post(messages=_user("word " * 300))
    self.assertEqual(status, 400)
    self.assertIn("context", body["error"]["message"])
    big = _png(9, size=(400, 400))  # > the 20 kB limit of this server
    status, body = post(messages=_user(QUESTION, _data_url(big)))
    self.assertEqual(status, 413)
    status, body = post(messages=_user(QUESTION, "data:image/png;base64,@@@"))
    self.assertEqual(status, 400)
    status, body = post(messages=_user(QUESTION, _data_url(b"not an image")))
    self.assertEqual(status, 400)
    self.assertEqual(post(messages=_user(QUESTION, "/no/such/file.png"))[0], 400)
    with urllib.request.urlopen(self.url + "/v1/models") as response:
      self.assertEqual(json.loads(response.read())["data"][0]["id"], "tiny-llava")

  def test_stop_strings(self):
    want = self.expected[2]
    cut = want[len(want) // 2:len(want) // 2 + 2]
    status, body = _post(self.url, {"temperature": 0, "max_tokens": 12, "stop": [cut],
                                    "messages": _user(QUESTION, _data_url(self.images[2]))})
    self.assertEqual(status, 200, body)
    self.assertEqual(body["choices"][0]["message"]["content"], want[:want.index(cut)])
    self.assertEqual(body["choices"][0]["finish_reason"], "stop")

  def test_command_line_server(self):
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
      status, body = _post(url, {"temperature": 0, "max_tokens": 12,
                                 "messages": _user(QUESTION, _data_url(self.images[3]))})
      self.assertEqual(status, 200, body)
      self.assertEqual(body["choices"][0]["message"]["content"], self.expected[3])
    finally:
      proc.send_signal(signal.SIGINT)
      self.assertEqual(proc.wait(timeout=60), 0)


if __name__ == "__main__":
  absltest.main()
