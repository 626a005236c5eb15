"""The FastAPI app: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.

The event loop only moves bytes. A request is admitted if fewer than `max_pending` are in
flight (else 503 + Retry-After before its body is read); its body is read with a size limit and
a deadline; parsing, image decoding and tokenization run in a bounded thread pool; the job then
waits on the worker's bounded queue (full → 503 + Retry-After) and its events come back to the
loop with `call_soon_threadsafe`.
"""

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import secrets
import socket
import threading

import fastapi
from fastapi import responses
from starlette.exceptions import HTTPException
import uvicorn

from llava_jax.serving import http as http_lib
from llava_jax.serving import protocol
from llava_jax.serving import workers

RETRY_AFTER_S = 1


@dataclasses.dataclass(frozen=True)
class Settings:
  model_name: str = "llava_jax"
  scheduler: str = "continuous"      # or "static"
  max_batch: int = 8
  queue_size: int = 32
  chunk_size: int = 8
  cache_len: int | None = None       # KV slots per row (continuous); default the context
  max_pending: int = 64              # admitted requests (reading, preprocessing, queued, decoding)
  preprocess_workers: int = 2
  max_body_bytes: int = 16 << 20
  body_timeout_s: float = 30.0
  header_timeout_s: float = 10.0
  default_max_tokens: int = 256
  api_key: str | None = None
  limits: protocol.Limits = protocol.Limits()


def _error(e: protocol.RequestError) -> responses.JSONResponse:
  headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
  return responses.JSONResponse(e.body(), status_code=e.status, headers=headers)


def _busy(message: str) -> protocol.RequestError:
  return protocol.RequestError(503, message, None, "server_busy", retry_after=RETRY_AFTER_S)


async def read_body(request: fastapi.Request, limit: int, timeout_s: float) -> bytes:
  """The body, at most `limit` bytes (413 past it) and within `timeout_s` (408 after)."""
  length = request.headers.get("content-length")
  if length is not None and length.isdigit() and int(length) > limit:
    raise protocol.RequestError(413, f"request body of {length} bytes is over the {limit}-byte "
                                "limit", None, "request_too_large")
  chunks, size = [], 0

  async def read():
    nonlocal size
    async for chunk in request.stream():
      size += len(chunk)
      if size > limit:
        raise protocol.RequestError(413, f"request body is over the {limit}-byte limit", None,
                                    "request_too_large")
      chunks.append(chunk)
  try:
    await asyncio.wait_for(read(), timeout_s)
  except TimeoutError:
    raise protocol.RequestError(408, f"request body not received within {timeout_s} s", None,
                                "request_timeout") from None
  return b"".join(chunks)


class Service:
  """What the routes share: the worker, the preprocessing pool, the admission count."""

  def __init__(self, chat_model, settings: Settings, start_worker: bool = True):
    self.model = chat_model
    self.settings = settings
    if settings.scheduler == "continuous":
      self.worker = workers.ContinuousWorker(chat_model, settings.max_batch, settings.queue_size,
                                             settings.chunk_size, settings.cache_len)
    elif settings.scheduler == "static":
      self.worker = workers.StaticWorker(chat_model, settings.max_batch, settings.queue_size,
                                         settings.chunk_size)
    else:
      raise ValueError(f"scheduler must be 'continuous' or 'static', got {settings.scheduler!r}")
    self.pool = concurrent.futures.ThreadPoolExecutor(settings.preprocess_workers,
                                                      thread_name_prefix="llava-preprocess")
    digest = hashlib.sha256(f"{settings.model_name}/{settings.scheduler}".encode()).hexdigest()
    self.responses = protocol.Responses(settings.model_name, f"fp_{digest[:12]}")
    self.pending = 0
    self._lock = threading.Lock()
    if start_worker:
      self.worker.start()

  def close(self):
    self.worker.stop()
    self.pool.shutdown(wait=True)

  def _finish_one(self):
    with self._lock:
      self.pending -= 1

  def admit(self):
    with self._lock:
      if self.pending >= self.settings.max_pending:
        raise _busy(f"server busy: {self.pending} requests in flight, retry later")
      self.pending += 1

  def parse(self, body: bytes) -> protocol.Parsed:
    try:
      obj = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise protocol.RequestError(400, f"request body is not valid JSON: {e}", None,
                                  "invalid_json") from None
    s = self.settings
    return protocol.parse_request(obj, self.model, s.model_name, s.limits,
                                  default_max_tokens=s.default_max_tokens,
                                  logprobs_supported=s.scheduler == "continuous")

  def start_job(self, parsed: protocol.Parsed, emit) -> None:
    """Submits the job; `emit` gets its events (the admission slot frees at the last one)."""
    def on_event(event):
      if event[0] in ("done", "error"):
        self._finish_one()
      emit(event)
    parsed.job.emit = on_event
    self.worker.submit(parsed.job)


def make_app(chat_model, settings: Settings = Settings(), *, start_worker: bool = True,
             service: Service | None = None) -> fastapi.FastAPI:
  """The app; `app.state.service` holds the worker (`service.close()` stops it)."""
  service = service or Service(chat_model, settings, start_worker)
  app = fastapi.FastAPI(title="llava_jax", docs_url=None, redoc_url=None, openapi_url=None)
  app.state.service = service

  @app.exception_handler(protocol.RequestError)
  async def request_error(_, e: protocol.RequestError):
    return _error(e)

  @app.exception_handler(HTTPException)
  async def http_error(request, e: HTTPException):
    what = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else (
        str(e.detail))
    return _error(protocol.RequestError(e.status_code, what, None, "not_found"))

  def check_key(request: fastapi.Request):
    if settings.api_key is None:
      return
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
      raise protocol.RequestError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                  None, "invalid_api_key")

  @app.get("/health")
  async def health():
    return {"status": "ok", "model": settings.model_name, "scheduler": settings.scheduler,
            "in_flight": service.pending, "queued": service.worker.waiting}

  @app.get("/v1/models", dependencies=[fastapi.Depends(check_key)])
  async def models():
    return service.responses.models()

  @app.get("/v1/models/{name}", dependencies=[fastapi.Depends(check_key)])
  async def model(name: str):
    if name != settings.model_name:
      raise protocol.RequestError(404, f"unknown model {name!r}", "model", "model_not_found")
    return service.responses.models()["data"][0]

  @app.post("/v1/chat/completions", dependencies=[fastapi.Depends(check_key)])
  async def chat(request: fastapi.Request):
    service.admit()
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    try:
      body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
      parsed = await loop.run_in_executor(service.pool, service.parse, body)
      service.start_job(parsed, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
    except BaseException:
      service._finish_one()
      raise
    job = parsed.job
    if parsed.stream:
      return responses.StreamingResponse(_stream(service, parsed, events),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
    text, logprobs = [], []
    try:
      while True:
        event = await events.get()
        if event[0] == "text":
          text.append(event[1])
          logprobs += event[2]
        elif event[0] == "error":
          raise protocol.RequestError(500, event[1], None, "generation_failed")
        else:
          _, reason, count = event
          return service.responses.completion(job, "".join(text), reason, count, logprobs)
    finally:
      job.cancelled = True  # no-op once done; frees the row if the client went away

  return app


async def _stream(service: Service, parsed: protocol.Parsed, events: asyncio.Queue):
  job = parsed.job
  chunk, usage_chunk = service.responses.chunk_maker(job, parsed.include_usage)

  def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"
  try:
    yield sse(chunk({"role": "assistant", "content": ""}))
    while True:
      event = await events.get()
      if event[0] == "text":
        yield sse(chunk({"content": event[1]}, logprobs=event[2]))
      elif event[0] == "error":
        yield sse(protocol.RequestError(500, event[1], None, "generation_failed").body())
        break
      else:
        yield sse(chunk({}, event[1]))
        if parsed.include_usage:
          yield sse(usage_chunk(event[2]))
        break
    yield "data: [DONE]\n\n"
  finally:
    job.cancelled = True  # no-op once done; frees the row if the client went away


def uvicorn_server(app, settings: Settings, *, backlog: int = 2048,
                   graceful_timeout_s: int | None = None) -> uvicorn.Server:
  """uvicorn with a header deadline and keep-alive timeout; SIGTERM/SIGINT stop accepting,
  finish in-flight requests, then return from `run`."""
  config = uvicorn.Config(app, http=http_lib.timed_h11(settings.header_timeout_s),
                          timeout_keep_alive=5, backlog=backlog, log_level="warning",
                          timeout_graceful_shutdown=graceful_timeout_s)
  return uvicorn.Server(config)


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
  """A listening socket (port 0 picks a free one: `sock.getsockname()[1]`)."""
  sock = socket.create_server((host, port), backlog=backlog)
  sock.set_inheritable(True)
  return sock


class Running:
  """A server on a thread (tests, bench, web UI): `.url`, `.service`, `.stop()`."""

  def __init__(self, app, settings: Settings, host: str = "127.0.0.1", port: int = 0):
    self.sock = bind(host, port)
    self.url = f"http://{host}:{self.sock.getsockname()[1]}"
    self.service: Service = app.state.service
    self.server = uvicorn_server(app, settings)
    self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                   daemon=True)
    self.thread.start()
    while not self.server.started and self.thread.is_alive():
      threading.Event().wait(0.02)

  def stop(self):
    self.server.should_exit = True
    self.thread.join(timeout=30)
    self.service.close()
