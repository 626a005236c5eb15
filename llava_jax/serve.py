r"""OpenAI-compatible HTTP endpoint: `POST /v1/chat/completions`, `GET /v1/models`.

  python -m llava_jax.serve --ckpt=DIR --port=8000

Threads: the HTTP server runs one thread per connection; those threads only parse, validate and
tokenize, then put a job on a bounded queue (full → 503) and wait on the job's own event queue.
One worker thread owns the model: it takes every job waiting (up to --max_batch), runs them as
one left-padded decode batch and hands each row's text pieces back as they are generated.
Requests that arrive during a decode wait for the next batch (static batching).
"""

import base64
import binascii
import dataclasses
import http.server
import json
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from absl import app
from absl import flags
import numpy as np

from llava_jax import prompting
from llava_jax import sampling
from llava_jax import text_stream


class RequestError(Exception):
  """A client error: becomes an HTTP 4xx/5xx with an OpenAI-style error body."""

  def __init__(self, status: int, message: str, param: str | None = None):
    super().__init__(message)
    self.status, self.message, self.param = status, message, param


@dataclasses.dataclass
class Job:
  """One chat completion request, ready to decode."""
  prompt_ids: list[int]
  images: np.ndarray            # float32[M, H, W, 3]
  params: sampling.SamplingParams
  max_tokens: int
  stop: list[str]
  events: queue.Queue = dataclasses.field(default_factory=queue.Queue)
  # events: ("text", str) ... then ("done", finish_reason, completion_tokens) or ("error", msg)
  cancelled: bool = False


class BatchingWorker:
  """Owns the model; decodes queued jobs in batches of up to `max_batch`."""

  def __init__(self, chat_model, max_batch: int, queue_size: int, chunk_size: int = 8):
    self._model = chat_model
    self._max_batch = max_batch
    self._chunk_size = chunk_size
    self._jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
    self._thread = threading.Thread(target=self._loop, name="llava-decode", daemon=True)
    self._stopping = threading.Event()
    self.batch_sizes: list[int] = []  # decode batch sizes so far (tests and logs read it)

  def start(self):
    self._thread.start()

  def stop(self):
    self._stopping.set()
    if self._thread.is_alive():
      self._thread.join(timeout=30)

  def submit(self, job: Job):
    try:
      self._jobs.put_nowait(job)
    except queue.Full:
      raise RequestError(503, "server busy: request queue is full, retry later") from None

  def _take_batch(self) -> list[Job]:
    try:
      first = self._jobs.get(timeout=0.1)
    except queue.Empty:
      return []
    batch = [first]
    while len(batch) < self._max_batch:
      try:
        batch.append(self._jobs.get_nowait())
      except queue.Empty:
        break
    return [j for j in batch if not j.cancelled]

  def _loop(self):
    while not self._stopping.is_set():
      batch = self._take_batch()
      if not batch:
        continue
      self.batch_sizes.append(len(batch))
      try:
        self._run(batch)
      except Exception as e:  # noqa: BLE001 - report to every waiting client, keep serving
        for job in batch:
          job.events.put(("error", f"generation failed: {type(e).__name__}: {e}"))

  def _run(self, batch: list[Job]):
    tokenizer = self._model.tokenizer
    streams = [text_stream.TextStream(tokenizer, j.stop) for j in batch]
    # Rows may hold different image counts: zero-pad to the batch's most (zeros are unread).
    most = max(len(j.images) for j in batch)
    pixels = np.zeros((len(batch), most) + batch[0].images.shape[1:], np.float32)
    for b, job in enumerate(batch):
      pixels[b, :len(job.images)] = job.images
    cancel = np.zeros(len(batch), bool)
    counts = [0] * len(batch)
    pieces_iter = self._model.generator.stream(
        [j.prompt_ids for j in batch], pixels, params=[j.params for j in batch],
        max_new_tokens=[j.max_tokens for j in batch], cancel=cancel, chunk_size=self._chunk_size)
    for new_ids, done_B, eos_B in pieces_iter:
      for b, job in enumerate(batch):
        if cancel[b]:
          continue
        counts[b] += len(new_ids[b])
        piece = streams[b].push(new_ids[b])
        if piece:
          job.events.put(("text", piece))
        if not (done_B[b] or streams[b].stopped or job.cancelled):
          continue
        tail = streams[b].finish()
        if tail:
          job.events.put(("text", tail))
        ended_by_eos = bool(done_B[b] and eos_B[b])
        reason = "stop" if streams[b].stopped or ended_by_eos else "length"
        job.events.put(("done", reason, counts[b] + ended_by_eos))
        cancel[b] = True  # frees the row: the decode loop stops when all rows are done


def _load_image(url: str, max_bytes: int, allow_local: bool) -> bytes:
  """Bytes of an `image_url` part: a base64 data URL or a local file path / file:// URL."""
  if url.startswith("data:"):
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
      raise RequestError(400, "image_url data URLs must be base64 (data:image/...;base64,...)",
                         "messages")
    if len(payload) * 3 // 4 > max_bytes:
      raise RequestError(413, f"image larger than the {max_bytes}-byte limit", "messages")
    try:
      return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
      raise RequestError(400, "image_url data URL is not valid base64", "messages") from None
  if url.startswith(("http://", "https://")):
    raise RequestError(400, "remote image URLs are not fetched; send a base64 data URL",
                       "messages")
  if not allow_local:
    raise RequestError(400, "local image paths are disabled on this server", "messages")
  path = url.removeprefix("file://")
  if not os.path.isfile(path):
    raise RequestError(400, f"image file not found: {path}", "messages")
  if os.path.getsize(path) > max_bytes:
    raise RequestError(413, f"image {path} larger than the {max_bytes}-byte limit", "messages")
  with open(path, "rb") as f:
    return f.read()


def _parse_messages(raw, max_bytes: int, allow_local: bool) -> list[prompting.Message]:
  """OpenAI `messages` → prompting.Message list, images as encoded bytes."""
  if not isinstance(raw, list) or not raw:
    raise RequestError(400, "'messages' must be a non-empty list", "messages")
  messages = []
  for i, m in enumerate(raw):
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
      raise RequestError(400, f"messages[{i}] needs role system|user|assistant", "messages")
    content = m.get("content")
    if isinstance(content, str):
      parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
      parts = content
    else:
      raise RequestError(400, f"messages[{i}].content must be a string or a list of parts",
                         "messages")
    out_parts: list[str | bytes] = []
    for j, p in enumerate(parts):
      kind = p.get("type") if isinstance(p, dict) else None
      if kind == "text" and isinstance(p.get("text"), str):
        out_parts.append(p["text"])
      elif kind == "image_url":
        spec = p.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
          raise RequestError(400, f"messages[{i}].content[{j}].image_url.url must be a string",
                             "messages")
        out_parts.append(_load_image(url, max_bytes, allow_local))
      else:
        raise RequestError(400, f"messages[{i}].content[{j}]: unsupported part type {kind!r}",
                           "messages")
    messages.append(prompting.Message(role=m["role"], parts=out_parts))
  return messages


def _number(body, name, default, lo, hi, kind=float):
  value = body.get(name, default)
  if value is None:
    value = default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      kind is int and not float(value).is_integer()):
    raise RequestError(400, f"'{name}' must be a {kind.__name__}", name)
  if not lo <= value <= hi:
    raise RequestError(400, f"'{name}' must be in [{lo}, {hi}], got {value}", name)
  return kind(value)


class ChatService:
  """Request → validated Job → response dicts; the HTTP handler only moves bytes."""

  def __init__(self, chat_model, model_name: str, worker: BatchingWorker,
               max_image_bytes: int = 10 << 20, allow_local_images: bool = True,
               default_max_tokens: int = 256):
    self.model = chat_model
    self.model_name = model_name
    self.worker = worker
    self.max_image_bytes = max_image_bytes
    self.allow_local_images = allow_local_images
    self.default_max_tokens = default_max_tokens

  def models(self) -> dict:
    return {"object": "list", "data": [
        {"id": self.model_name, "object": "model", "created": 0, "owned_by": "llava_jax"}]}

  def make_job(self, body) -> tuple[Job, bool]:
    if not isinstance(body, dict):
      raise RequestError(400, "request body must be a JSON object")
    model = body.get("model", self.model_name)
    if model != self.model_name:
      raise RequestError(404, f"unknown model {model!r}; this server has {self.model_name!r}",
                         "model")
    if body.get("n", 1) != 1:
      raise RequestError(400, "only n=1 is supported", "n")
    messages = _parse_messages(body.get("messages"), self.max_image_bytes,
                               self.allow_local_images)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 1e-6, 1.0)
    seed = _number(body, "seed", 0, 0, 2**32 - 1, int)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": limit}, "max_tokens", self.default_max_tokens, 1,
                         self.model.context_len, int)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
      raise RequestError(400, "'stop' must be a string or a list of up to 4 strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
      raise RequestError(400, "'stream' must be a boolean", "stream")
    try:
      ids, images = self.model.encode_messages(messages)
    except prompting.PromptError as e:
      raise RequestError(400, str(e), "messages") from None
    if len(ids) + max_tokens > self.model.context_len:
      raise RequestError(
          400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
          f"context of {self.model.context_len} tokens", "max_tokens")
    params = sampling.SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    return Job(ids, images, params, max_tokens, stop), stream

  def events(self, job: Job) -> Iterator[tuple]:
    while True:
      event = job.events.get()
      yield event
      if event[0] in ("done", "error"):
        return

  def complete(self, job: Job) -> dict:
    text = []
    for event in self.events(job):
      if event[0] == "text":
        text.append(event[1])
      elif event[0] == "error":
        raise RequestError(500, event[1])
      else:
        _, reason, count = event
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": self.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                     "finish_reason": reason}],
        "usage": {"prompt_tokens": len(job.prompt_ids), "completion_tokens": count,
                  "total_tokens": len(job.prompt_ids) + count},
    }

  def chunks(self, job: Job) -> Iterator[dict]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": self.model_name}
    def chunk(delta, reason=None):
      return dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": reason}])
    yield chunk({"role": "assistant", "content": ""})
    for event in self.events(job):
      if event[0] == "text":
        yield chunk({"content": event[1]})
      elif event[0] == "error":
        yield {"error": {"message": event[1], "type": "server_error"}}
      else:
        yield chunk({}, event[1])


def _make_handler(service: ChatService):

  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "llava_jax"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet by default; absl logs the important things
      pass

    def _send_json(self, status: int, obj: dict):
      data = json.dumps(obj).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _send_error(self, e: RequestError):
      kind = "invalid_request_error" if e.status < 500 else (
          "server_busy" if e.status == 503 else "server_error")
      self._send_json(e.status, {"error": {"message": e.message, "type": kind, "param": e.param,
                                           "code": e.status}})

    def do_GET(self):
      if self.path.rstrip("/") == "/v1/models":
        self._send_json(200, service.models())
      elif self.path.rstrip("/") == f"/v1/models/{service.model_name}":
        self._send_json(200, service.models()["data"][0])
      else:
        self._send_error(RequestError(404, f"no route GET {self.path}"))

    def do_POST(self):
      try:
        if self.path.rstrip("/") != "/v1/chat/completions":
          raise RequestError(404, f"no route POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        try:
          body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise RequestError(400, f"request body is not valid JSON: {e}") from None
        job, stream = service.make_job(body)
        service.worker.submit(job)
        if not stream:
          self._send_json(200, service.complete(job))
          return
      except RequestError as e:
        self._send_error(e)
        return
      self._stream(job)

    def _stream(self, job: Job):
      self.send_response(200)
      self.send_header("Content-Type", "text/event-stream")
      self.send_header("Cache-Control", "no-cache")
      self.send_header("Connection", "close")
      self.end_headers()
      self.close_connection = True
      try:
        for chunk in service.chunks(job):
          self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
          self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
      except (BrokenPipeError, ConnectionResetError):
        job.cancelled = True  # client went away: free its decode row

  return Handler


def make_server(chat_model, host: str = "127.0.0.1", port: int = 8000, *,
                model_name: str = "llava_jax", max_batch: int = 8, queue_size: int = 32,
                max_image_bytes: int = 10 << 20, allow_local_images: bool = True,
                chunk_size: int = 8,
                start_worker: bool = True) -> http.server.ThreadingHTTPServer:
  """A ready (not yet serving) HTTP server; `.service.worker` runs unless not `start_worker`.

  Call `serve_forever()` (or run it in a thread) and `shutdown()` + `service.worker.stop()`.
  port=0 picks a free port (`server.server_address[1]`).
  """
  worker = BatchingWorker(chat_model, max_batch=max_batch, queue_size=queue_size,
                          chunk_size=chunk_size)
  service = ChatService(chat_model, model_name, worker, max_image_bytes=max_image_bytes,
                        allow_local_images=allow_local_images)
  server = http.server.ThreadingHTTPServer((host, port), _make_handler(service))
  server.daemon_threads = True
  server.service = service
  if start_worker:
    worker.start()
  return server


def _define_flags():
  """Flags exist only when this module is the program (chat and tests import it too)."""
  flags.DEFINE_string("ckpt", None, "Model directory, training workdir or llava-hf dir.")
  flags.DEFINE_string("adapter", None, "LoRA adapters merged on load: a PEFT or LLaVA LoRA dir, or a LoRA workdir.")
  flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")
  flags.DEFINE_string("model_name", None, "Model id to serve (default: the directory name).")
  flags.DEFINE_integer("max_batch", 8, "Most requests decoded together.")
  flags.DEFINE_integer("queue_size", 32, "Waiting requests before 503.")
  flags.DEFINE_float("max_image_mb", 10.0, "Largest accepted image, MiB.")
  flags.DEFINE_bool("allow_local_images", True, "Accept image_url parts that are local paths.")
  flags.mark_flag_as_required("ckpt")


def main(argv):
  del argv
  from llava_jax import chat  # deferred: loading pulls in the whole model stack

  f = flags.FLAGS
  try:
    chat_model = chat.load_for_chat(f.ckpt, f.adapter)
  except chat.ChatError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  name = f.model_name or os.path.basename(os.path.normpath(f.ckpt))
  server = make_server(chat_model, f.host, f.port, model_name=name, max_batch=f.max_batch,
                       queue_size=f.queue_size, max_image_bytes=int(f.max_image_mb * (1 << 20)),
                       allow_local_images=f.allow_local_images)
  print(f"serving {name!r} on http://{f.host}:{server.server_address[1]}/v1", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.shutdown()
    server.service.worker.stop()


if __name__ == "__main__":
  _define_flags()
  app.run(main)
