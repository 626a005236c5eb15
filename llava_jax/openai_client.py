"""A small client for any OpenAI-compatible `/chat/completions` endpoint.

Standard library only (urllib), so that request accounting is exact: every HTTP attempt,
retries included, takes one unit of the shared `RequestBudget`, which is what a paid API bills.
Retries with exponential backoff and jitter on 429, 5xx and connection errors; other HTTP
errors (400, 401, 404, ...) fail at once, since repeating them cannot help.
"""

import concurrent.futures
import dataclasses
import json
import random
import threading
import time
from typing import Callable, Iterable, Iterator, Sequence
import urllib.error
import urllib.request

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class ApiError(RuntimeError):
  """A request that failed for good (non-retryable status or retries used up)."""

  def __init__(self, message: str, status: int | None = None):
    super().__init__(message)
    self.status = status


class BudgetExhausted(RuntimeError):
  """The request budget is spent; no further HTTP request may be sent."""


class RequestBudget:
  """A thread-safe cap on the number of HTTP requests sent (None = unlimited)."""

  def __init__(self, limit: int | None):
    self.limit = limit
    self.used = 0
    self._lock = threading.Lock()

  def take(self) -> None:
    with self._lock:
      if self.limit is not None and self.used >= self.limit:
        raise BudgetExhausted(f"request budget of {self.limit} spent")
      self.used += 1

  @property
  def exhausted(self) -> bool:
    with self._lock:
      return self.limit is not None and self.used >= self.limit


@dataclasses.dataclass
class ChatClient:
  """Calls `POST {api_base}/chat/completions` and returns the first choice's text."""
  api_base: str
  model: str | None
  api_key: str | None = None
  budget: RequestBudget = dataclasses.field(default_factory=lambda: RequestBudget(None))
  max_retries: int = 5
  backoff_s: float = 1.0
  max_backoff_s: float = 30.0
  timeout_s: float = 300.0
  # Injected so tests can observe the backoff without waiting for it.
  sleep: Callable[[float], None] = time.sleep

  def complete(self, messages: Sequence[dict], *, temperature: float = 0.2,
               max_tokens: int = 1024) -> str:
    """Sends one chat request (with retries); returns the assistant message text."""
    return self.complete_choice(messages, temperature=temperature, max_tokens=max_tokens)[0]

  def complete_choice(self, messages: Sequence[dict], *, temperature: float = 0.2,
                      max_tokens: int = 1024) -> tuple[str, str | None]:
    """Like `complete`, also returning the choice's finish_reason ('length' = cut off)."""
    request_json = {"messages": list(messages), "temperature": temperature,
                    "max_tokens": max_tokens}
    if self.model:  # A single-model server (llava_jax.serve) needs no name.
      request_json["model"] = self.model
    body = json.dumps(request_json).encode()
    url = self.api_base.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    last_error = "no attempt made"
    for attempt in range(self.max_retries + 1):
      self.budget.take()
      request = urllib.request.Request(url, data=body, headers=headers, method="POST")
      retry_after = None
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          return _choice(response.read(), url)
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        if e.code not in RETRYABLE_STATUS:
          raise ApiError(f"{url}: HTTP {e.code}: {detail}", status=e.code) from e
        last_error = f"HTTP {e.code}: {detail}"
        retry_after = _retry_after_s(e.headers.get("Retry-After"))
      except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        last_error = f"{type(e).__name__}: {e}"
      if attempt < self.max_retries:
        self.sleep(self._backoff(attempt, retry_after))
    raise ApiError(f"{url}: gave up after {self.max_retries + 1} attempts; last: {last_error}")

  def _backoff(self, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
      return min(retry_after, self.max_backoff_s)
    # Jitter spreads the retries of concurrent workers so they do not hit the limit together.
    return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def _retry_after_s(value: str | None) -> float | None:
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:
    return None  # An HTTP date; fall back to our own backoff.


def _choice(body: bytes, url: str) -> tuple[str, str | None]:
  try:
    choice = json.loads(body)["choices"][0]
    content = choice["message"]["content"]
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise ApiError(f"{url}: response is not a chat completion with choices[0].message.content: "
                   f"{body[:300]!r}") from e
  return (content if isinstance(content, str) else ""), choice.get("finish_reason")


def map_concurrently(fn: Callable, items: Iterable, concurrency: int) -> Iterator[tuple]:
  """Yields `(item, result, error)` as calls finish, at most `concurrency` in flight.

  Submission is lazy (a bounded window), so a million-item input never queues a million
  futures, and a caller that stops iterating stops the work. Errors are returned, not
  raised, so one bad item cannot end the run; `BudgetExhausted` stops new submissions.
  """
  items = iter(items)
  stop = threading.Event()
  with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
    pending = {}

    def submit_next() -> bool:
      if stop.is_set():
        return False
      item = next(items, _DONE)
      if item is _DONE:
        return False
      pending[pool.submit(fn, item)] = item
      return True

    for _ in range(concurrency):
      if not submit_next():
        break
    try:
      while pending:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          item = pending.pop(future)
          error = future.exception()
          if isinstance(error, BudgetExhausted):
            stop.set()
          yield item, (None if error else future.result()), error
          submit_next()
    finally:
      stop.set()
      for future in pending:
        future.cancel()


_DONE = object()
