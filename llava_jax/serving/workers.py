"""The thread that owns the model. Jobs come in on a bounded queue (full → 503); text pieces go
back through each job's `emit`, so the HTTP event loop and the web UI never run the model.

- `ContinuousWorker` (default): `scheduler.SlotScheduler`; a job joins the running decode batch
  at the next chunk boundary, a finished row frees its slot.
- `StaticWorker`: the earlier scheme, kept for comparison (`bench.serve`): takes every waiting
  job (up to max_batch), decodes them as one batch, and only then looks at the queue again.
"""

import queue
import threading

import numpy as np

from llava_jax.infer import scheduler as scheduler_lib
from llava_jax.infer import text_stream
from llava_jax.serving import protocol


class _Worker:
  def __init__(self, chat_model, max_batch: int, queue_size: int, chunk_size: int):
    self._model = chat_model
    self.max_batch = max_batch
    self.chunk_size = chunk_size
    self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
    self._thread = threading.Thread(target=self._loop, name="llava-decode", daemon=True)
    self._stopping = threading.Event()
    self.batch_sizes: list[int] = []  # decode batch sizes so far (tests and logs read it)

  def start(self):
    self._thread.start()

  def stop(self):
    self._stopping.set()
    if self._thread.is_alive():
      self._thread.join(timeout=30)

  @property
  def waiting(self) -> int:
    return self._jobs.qsize()

  def submit(self, job: protocol.Job):
    try:
      self._jobs.put_nowait(job)
    except queue.Full:
      raise protocol.RequestError(503, "server busy: request queue is full, retry later",
                                  None, "server_busy", retry_after=1) from None

  def _fail(self, jobs, e: Exception):
    for job in jobs:
      job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))


class _Row:
  """Host-side state of one decoding job: its text stream and token count."""

  def __init__(self, job: protocol.Job, tokenizer):
    self.job = job
    self.stream = text_stream.TextStream(tokenizer, job.stop)
    self.count = 0

  def push(self, tokenizer, tokens: scheduler_lib.Tokens) -> bool:
    """Emits the new text; returns True when the row is finished."""
    job = self.job
    self.count += len(tokens.ids)
    ids = tokens.ids[:-1] if tokens.eos else tokens.ids
    lps = []
    if job.logprobs and ids and not self.stream.stopped:
      lps = protocol.token_logprobs(tokenizer, self.stream.token_ids, ids, tokens.logprobs,
                                    tokens.top_ids, tokens.top_logprobs, job.top_logprobs)
    piece = self.stream.advance(ids, tokens.done or job.cancelled)
    if piece or lps:
      job.emit(("text", piece, lps))
    if not self.stream.finished:
      return False
    reason = "stop" if self.stream.stopped or tokens.eos else "length"
    job.emit(("done", reason, self.count))
    return True


class ContinuousWorker(_Worker):
  """Continuous batching: up to `max_batch` rows decode together; jobs join between chunks."""

  def __init__(self, chat_model, max_batch: int = 8, queue_size: int = 32, chunk_size: int = 8,
               cache_len: int | None = None):
    super().__init__(chat_model, max_batch, queue_size, chunk_size)
    self.scheduler = scheduler_lib.SlotScheduler(chat_model.generator, slots=max_batch,
                                                 cache_len=cache_len, chunk_size=chunk_size)

  def _loop(self):
    tokenizer = self._model.tokenizer
    rows: dict[int, _Row] = {}
    head = None  # a job that waits for room at the shared index
    while not self._stopping.is_set() or rows:
      try:
        while self.scheduler.free():
          if head is None:
            head = self._jobs.get_nowait() if rows else self._jobs.get(timeout=0.1)
          if head.cancelled:
            head.emit(("done", "cancelled", 0))
            head = None
            continue
          request = scheduler_lib.Request(head.prompt_ids, head.images, head.params,
                                          head.max_tokens, head.logprobs)
          joined = self.scheduler.try_join(request)
          if joined is None:
            break
          row, tokens = joined
          rows[row] = _Row(head, tokenizer)
          head = None
          if rows[row].push(tokenizer, tokens):
            self.scheduler.release(row)
            del rows[row]
      except queue.Empty:
        pass
      except Exception as e:  # noqa: BLE001 - report to the client, keep serving
        if head is not None:
          self._fail([head], e)
          head = None
        continue
      if not rows:
        continue
      self.batch_sizes.append(len(rows))
      try:
        produced = self.scheduler.step()
      except Exception as e:  # noqa: BLE001
        self._fail([r.job for r in rows.values()], e)
        for row in list(rows):
          self.scheduler.release(row)
        rows.clear()
        continue
      for row, tokens in produced.items():
        if rows[row].push(tokenizer, tokens):
          self.scheduler.release(row)
          del rows[row]


class StaticWorker(_Worker):
  """Static batching: a batch runs to its end before the next one starts."""

  def _take_batch(self) -> list:
    try:
      first = self._jobs.get(timeout=0.1)
    except queue.Empty:
      return []
    batch = [first]
    while len(batch) < self.max_batch:
      try:
        batch.append(self._jobs.get_nowait())
      except queue.Empty:
        break
    for job in batch:
      if job.cancelled:
        job.emit(("done", "cancelled", 0))
    return [j for j in batch if not j.cancelled]

  def _loop(self):
    while not self._stopping.is_set() or self._jobs.qsize():
      batch = self._take_batch()
      if not batch:
        continue
      self.batch_sizes.append(len(batch))
      try:
        self._run(batch)
      except Exception as e:  # noqa: BLE001 - report to every waiting client, keep serving
        self._fail(batch, e)

  def _run(self, batch: list):
    tokenizer = self._model.tokenizer
    rows = [_Row(j, tokenizer) for j in batch]
    # Rows may hold different image counts: zero-pad to the batch's most (zeros are unread).
    most = max(len(j.images) for j in batch)
    pixels = np.zeros((len(batch), most) + batch[0].images.shape[1:], np.float32)
    for b, job in enumerate(batch):
      pixels[b, :len(job.images)] = job.images
    cancel = np.zeros(len(batch), bool)
    pieces_iter = self._model.generator.stream(
        [j.prompt_ids for j in batch], pixels, params=[j.params for j in batch],
        max_new_tokens=[j.max_tokens for j in batch], cancel=cancel, chunk_size=self.chunk_size)
    for new_ids, done_B, eos_B in pieces_iter:
      for b, row in enumerate(rows):
        if cancel[b]:
          continue
        ended_by_eos = bool(done_B[b] and eos_B[b])
        ids = list(new_ids[b]) + ([row.job.prompt_ids[-1]] if ended_by_eos else [])
        # The stream drops the EOS id; a placeholder keeps the count (it is cut again by push).
        tokens = scheduler_lib.Tokens(ids, [], [], [], bool(done_B[b]), ended_by_eos)
        if row.push(tokenizer, tokens):
          cancel[b] = True  # frees the row: the decode loop stops when all rows are done
