"""The training input pipeline on Grain: LLaVA records → batches of the Batch contract.

    source ─► host shard ─► shuffle(seed, new order each epoch) ─► repeat ─► map(SampleBuilder)
      ─► drop bad samples + batch ─► [mp_prefetch: each worker batches its slice] ─► batches

Entry point for training (and notebooks):

    it = make_train_iterator(config.data, config.model, global_batch_size=64, seed=config.seed,
                             process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)   # input_ids, labels, segment_ids, positions: int32[B, T];
                       # pixels: float32[B, M, H, W, 3]; B = global_batch_size // process_count
    it.get_state() / it.set_state(state)         # JSON-able; grain.checkpoint.CheckpointSave(it)
    it.skip_report()                 # skipped / repaired samples, this epoch and in total

`config.data.path` is a LLaVA JSON / JSONL file (images under `data.image_dir`) or a directory
written by `python -m llava_jax.data.prepare` (ArrayRecord shards with the image bytes inside).

Bad input never stops a run in `data.on_error="skip"` mode: each bad sample (unreadable JSONL
line, missing / empty / mislabelled / truncated image, wrong roles, `<image>` without an image,
too many images, a sample with no answer within `data.max_len`) is dropped before batching —
batches stay full and shapes static — and counted with its record id and reason; the first
`data.skip_reasons_shown` reasons are logged at the end of every epoch. An image whose text has
no `<image>` is shown to the model anyway (`<image>\\n` prepended; warned once). In "strict"
mode the first bad sample raises `StrictModeError` (a records.RecordError) naming the record.

`data.pack=True` packs consecutive samples first-fit into each batch's rows instead of one per
row (static shapes: `max_len` tokens and `max_images` image slots per row; segment ids 1..k,
positions from 0 per sample, a sample's images in the row's next slots, its first label never a
target); the model attends only within a segment, so the loss equals the unpacked one.

Every step is deterministic in (seed, host, position in the stream), so restoring a saved
iterator state into a new iterator yields the batches an unbroken run would, with or without
worker processes and across epoch boundaries (the skip counts are part of the state). Each
worker batches its own slice of the stream, so the batch order depends on `data.num_workers`:
resume with the worker count the state was saved with.
"""

import functools
import json
import os
import threading
import time
from typing import Any, Iterator

from absl import flags
from absl import logging
import grain
import ml_collections
import numpy as np

from llava_jax.config import check as config_check
from llava_jax.config import schema
from llava_jax.data import conversation
from llava_jax.data import image as image_lib
from llava_jax.data import records as records_lib
from llava_jax.data import shards
from llava_jax.data import tokenize

BATCH_KEYS = ("input_ids", "labels", "segment_ids", "positions", "pixels")
# What a worker sends per sample: pixels travel as uint8 crops and are normalized when batched.
ROW_KEYS = ("input_ids", "labels", "segment_ids", "positions", "pixels_uint8", "num_images")


class BadSampleError(ValueError):
  """A record that cannot become a training sample; `kind` groups it in the skip report."""

  def __init__(self, kind: str, reason: str):
    super().__init__(f"{kind}: {reason}")
    self.kind = kind


# ---------------------------------------------------------------------------------------------
# Sources: every element is a `records.Record` (picklable, no decoded pixels yet).


def read_json_examples(path: str) -> list[records_lib.Record]:
  """Records of a LLaVA JSON list or JSONL file; unreadable lines become records with a problem."""
  return [records_lib.Record(item.id, None, item.where, (item.kind, item.message))
          if isinstance(item, records_lib.BadLine) else item
          for item in records_lib.read_records(path)]


def is_prepared(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, shards.INFO_FILE))


def make_source(data_cfg: ml_collections.ConfigDict) -> grain.MapDataset:
  """MapDataset of records.Records from JSON/JSONL + image folder, or from prepared shards."""
  if is_prepared(data_cfg.path):
    return grain.MapDataset.source(shards.ShardSource(data_cfg.path))
  if not os.path.isfile(data_cfg.path):
    raise FileNotFoundError(f"data.path {data_cfg.path!r} is neither a JSON/JSONL file nor a "
                            "directory written by llava_jax.data.prepare")
  return grain.MapDataset.source(read_json_examples(data_cfg.path))


# ---------------------------------------------------------------------------------------------
# Map: Record → sample dict (or a skip marker).


class SampleBuilder:
  """Record → padded arrays for one row; runs in Grain workers (spawned processes).

  Holds only plain settings, so it pickles cheaply; the tokenizer loads once per process.
  """

  def __init__(self, data_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
               seed: int):
    config_check.check(data_cfg, "data")   # the one check of enum fields, also off `main`
    self.template = data_cfg.template
    self.tokenizer_path = data_cfg.tokenizer
    self.image_dir = data_cfg.image_dir
    self.max_len = data_cfg.max_len
    self.max_images = data_cfg.max_images
    self.image_aspect = data_cfg.image_aspect
    self.image_placement = data_cfg.image_placement
    self.system_prompt = data_cfg.system_prompt
    self.image_size = model_cfg.vision.image_size
    self.image_token_id = model_cfg.image_token_id
    self.num_image_tokens = schema.num_image_tokens(model_cfg)
    self.seed = seed
    self.strict = data_cfg.on_error == "strict"

  @property
  def encoder(self) -> tokenize.PromptTokenizer:
    return _cached_encoder(self.tokenizer_path, self.image_token_id, self.num_image_tokens)

  def tokens(self, example: records_lib.Record, index: int = 0):
    """(Encoded, image names, notes) of a record; raises BadSampleError.

    Problems that records.check_record calls warnings (an image with no `<image>` in the
    text, no id) are repaired and noted; strict mode refuses them like errors.
    """
    if example.data is None:
      raise BadSampleError(*example.problem)
    rec = example
    notes = []
    for problem in records_lib.check_record(rec, None, max_images=self.max_images):
      if problem.severity == records_lib.ERROR or self.strict:
        raise BadSampleError(problem.kind, f"{problem.field}: {problem.message}")
      notes.append(f"{problem.kind}: {problem.field}: {problem.message}")
    names = records_lib.images_of(rec)
    turns = [tuple(t) for t in records_lib.turns_of(rec)]
    turns = conversation.training_turns(turns, num_images=len(names),
                                        placement=self.image_placement,
                                        rng=conversation.record_rng(self.seed, index))
    try:
      rendered = self.encoder.render(self.template, turns, system=self.system_prompt)
    except conversation.TemplateError as e:
      raise BadSampleError("template", f"{self.template}: {e}") from None
    try:
      encoded = self.encoder.encode(rendered, self.max_len)
    except tokenize.SampleDropped as e:
      raise BadSampleError("too_long" if "too long" in str(e) else "no_supervised_token",
                           str(e)) from None
    if encoded.rounds_dropped:
      notes.append(f"truncated: {encoded.rounds_dropped} final round(s) cut to fit "
                   f"max_len={self.max_len}")
    return encoded, names, notes

  def pixels_uint8(self, example: records_lib.Record, names: list[str], count: int) -> np.ndarray:
    """uint8[M, S, S, 3]: the first `count` images resized + cropped (not yet normalized).

    Workers ship uint8 (4x less than float32 through shared memory); `model_pixels`
    normalizes in the consuming process.
    """
    out = np.zeros((self.max_images, self.image_size, self.image_size, 3), np.uint8)
    for i, name in enumerate(names[:count]):
      try:
        if example.images is None:
          decoded = image_lib.load_image(os.path.join(self.image_dir, name))
        elif example.images[i] is None:
          raise image_lib.ImageError(name, "missing_image", "image was unreadable at prepare time")
        else:
          decoded = image_lib.decode_image(example.images[i], name=name)
        out[i] = image_lib.resize_and_crop(decoded, self.image_size, self.image_aspect, name)
      except image_lib.ImageError as e:
        field = "image" if len(names) == 1 else f"image[{i}]"
        raise BadSampleError(e.kind, f"{field}: {e}") from None
    return out

  def build(self, example: records_lib.Record, index: int = 0) -> dict[str, np.ndarray]:
    """The padded row for `example`: BATCH_KEYS arrays (no batch axis); raises BadSampleError."""
    row, _ = self.build_with_notes(example, index)
    row["pixels"] = model_pixels(row.pop("pixels_uint8")[None], row.pop("num_images")[None])[0]
    return row

  def build_with_notes(self, example: records_lib.Record, index: int = 0):
    """(row, notes); the row has `pixels_uint8` and `num_images` in place of `pixels`."""
    encoded, names, notes = self.tokens(example, index)
    row = tokenize.pad_to(encoded, self.max_len, self.encoder.pad_id)
    row["pixels_uint8"] = self.pixels_uint8(example, names, encoded.num_images)
    row["num_images"] = np.int32(encoded.num_images)
    return row, notes

  def __call__(self, index: int, example: records_lib.Record) -> dict[str, Any]:
    """Grain map_with_index: the row plus bookkeeping, or a skip marker."""
    meta = {"id": example.id, "where": example.where, "index": index, "skip": "", "notes": []}
    try:
      row, meta["notes"] = self.build_with_notes(example, index)
    except BadSampleError as e:
      meta["skip"] = str(e)
      return meta
    except Exception as e:  # noqa: BLE001 - the record boundary: one bad record never kills a
      # worker; it is counted and named like any other (strict mode stops on it).
      meta["skip"] = f"{records_lib.BUILD_ERROR}: {example.where}: {type(e).__name__}: {e}"
      return meta
    return {**meta, **row}


def model_pixels(pixels_BxMxSxSx3: np.ndarray, num_images_B: np.ndarray) -> np.ndarray:
  """uint8 crops → float32[B, M, S, S, 3] CLIP-normalized, zeros where a row has no image m.

  The normalization is image.normalize's, so training sees exactly what inference sees.
  """
  out = image_lib.normalize(pixels_BxMxSxSx3)
  absent_BxM = np.arange(out.shape[1])[None, :] >= num_images_B[:, None]
  out[absent_BxM] = 0
  return out


@functools.lru_cache(maxsize=4)
def _cached_encoder(path: str, image_token_id: int, num_image_tokens: int):
  """One tokenizer per process and path (Grain workers load their own)."""
  return tokenize.PromptTokenizer(tokenize.load_tokenizer(path), image_token_id=image_token_id,
                                  num_image_tokens=num_image_tokens)


# ---------------------------------------------------------------------------------------------
# Skip + batch: drops skip markers before batching (full batches) and counts them. Runs in each
# worker process, so only whole batches (pixels still uint8) cross process boundaries.


class StrictModeError(records_lib.RecordError):
  """data.on_error="strict": the first bad sample, naming the record (picklable across workers)."""

  def __reduce__(self):
    return (functools.partial(StrictModeError, kind=self.kind, where=self.where),
            (self.record_id, self.field, self.reason))


class _SkipAndBatchDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, batch_size: int, epoch_size: int, strict: bool,
               reasons_shown: int, pack: bool = False):
    super().__init__(parent)
    self.batch_size = batch_size
    self.epoch_size = epoch_size
    self.strict = strict
    self.reasons_shown = reasons_shown
    self.pack = pack

  def __iter__(self) -> "_SkippingBatchIterator":
    return _SkippingBatchIterator(self._parent.__iter__(), self)


def _empty_stats() -> dict[str, Any]:
  return {"used": 0, "skipped": 0, "by_reason": {}, "first": [], "notes": {}, "first_notes": []}


def _add_stats(into: dict[str, Any], stats: dict[str, Any], shown: int) -> None:
  into["used"] += stats["used"]
  into["skipped"] += stats["skipped"]
  for key in ("by_reason", "notes"):
    for kind, n in stats[key].items():
      into[key][kind] = into[key].get(kind, 0) + n
  into["first"] = (into["first"] + stats["first"])[:shown]
  into["first_notes"] = (into["first_notes"] + stats["first_notes"])[:shown]


class _SkippingBatchIterator(grain.DatasetIterator):
  """Pulls rows, counts and drops skip markers, stacks full batches; stats live in its state."""

  _KEEP_EPOCHS = 3   # per-epoch stats kept in the state, for the end-of-epoch report

  def __init__(self, parent: grain.DatasetIterator, spec: _SkipAndBatchDataset):
    super().__init__(parent)
    self._spec = spec
    self._skip_stats = {"epoch": 0, "epochs": {"0": _empty_stats()}, "total": _empty_stats()}
    self._pending = None          # data.pack: the pulled sample that did not fit the last batch
    self._pending_state = None    # get_state() from before it was pulled

  def __next__(self) -> dict[str, np.ndarray]:
    if self._spec.pack:
      rows = self._packed_rows()
    else:
      rows = [self._next_usable() for _ in range(self._spec.batch_size)]
    # Pixels stay uint8 until TrainIterator: 4x fewer bytes through shared memory.
    return {k: np.stack([r[k] for r in rows]) for k in ROW_KEYS}

  def _next_usable(self) -> dict[str, Any]:
    """The next sample that is not a skip marker; counts what it passes."""
    skipped_in_a_row = 0
    while True:
      element = next(self._parent)
      epoch = element["index"] // self._spec.epoch_size
      if epoch != self._skip_stats["epoch"]:
        self._start_epoch(epoch)
      if not element["skip"]:
        break
      if self._spec.strict:
        kind = _reason_kind(element["skip"])
        raise StrictModeError(element["id"], "sample", element["skip"], kind=kind,
                              where=element["where"])
      self._count(element, "skipped", "by_reason", "first", element["skip"])
      skipped_in_a_row += 1
      if skipped_in_a_row >= self._spec.epoch_size:
        raise ValueError(f"a whole epoch of records was skipped; the last: record "
                         f"{element['id']}: {element['skip']}")
    self._count(element, "used")
    for note in element["notes"]:
      self._count(element, None, "notes", "first_notes", note)
    return element

  def _packed_rows(self) -> list[dict[str, Any]]:
    """data.pack: first-fit of consecutive samples into batch_size rows (static shapes).

    A sample goes into the first row with room for its tokens and its images; when no row of
    the batch has room the batch is done and the sample waits for the next one. Its stream
    position is not in the iterator state: the state is the one from before it was pulled, so
    a restore pulls it again (the pipeline is deterministic in the stream position).
    """
    rows = []
    while True:
      if self._pending is None:
        self._pending_state = self.get_state()
        self._pending = self._next_usable()
      row = next((r for r in rows if _fits(r, self._pending)), None)
      if row is None:
        if len(rows) == self._spec.batch_size:
          return rows
        row = {k: v.copy() for k, v in self._pending.items() if k in ROW_KEYS}
        row["segment_ids"][:] = 0
        row["num_images"] = np.int32(0)
        rows.append(row)
      _append_sample(row, self._pending)
      self._pending = None

  def _count(self, element, counter, by_kind=None, first=None, reason=""):
    epoch_stats = self._skip_stats["epochs"][str(self._skip_stats["epoch"])]
    for stats in (epoch_stats, self._skip_stats["total"]):
      if counter:
        stats[counter] += 1
      if by_kind:
        kind = _reason_kind(reason)
        stats[by_kind][kind] = stats[by_kind].get(kind, 0) + 1
        if len(stats[first]) < self._spec.reasons_shown:
          stats[first].append([element["id"], reason])

  def _start_epoch(self, epoch: int) -> None:
    epochs = self._skip_stats["epochs"]
    epochs[str(epoch)] = _empty_stats()
    for old in sorted(epochs, key=int)[:-self._KEEP_EPOCHS]:
      del epochs[old]
    self._skip_stats["epoch"] = epoch

  def get_state(self) -> dict[str, Any]:
    if self._pending is not None:
      return json.loads(json.dumps(self._pending_state))
    return {"parent": self._parent.get_state(), "skip_stats": json.loads(json.dumps(
        self._skip_stats))}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._skip_stats = json.loads(json.dumps(state["skip_stats"]))
    self._pending = None


def _sample_len(element: dict[str, Any]) -> int:
  return int(np.count_nonzero(element["segment_ids"]))


def _fits(row: dict[str, np.ndarray], element: dict[str, Any]) -> bool:
  """Whether a sample's tokens and images fit in what `row` has left."""
  return (_sample_len(row) + _sample_len(element) <= row["input_ids"].shape[0] and
          int(row["num_images"]) + int(element["num_images"]) <= row["pixels_uint8"].shape[0])


def _append_sample(row: dict[str, np.ndarray], element: dict[str, Any]) -> None:
  """Writes a sample after the row's last one: segment id k+1, positions from 0, its images in
  the next image slots (the model gives the j-th image-token run of a row pixels[j])."""
  start, n = _sample_len(row), _sample_len(element)
  end = start + n
  row["input_ids"][start:end] = element["input_ids"][:n]
  row["labels"][start:end] = element["labels"][:n]
  # Labels are shifted in the loss (position t predicts labels[t + 1]): a sample's first token is
  # never a target, so the previous sample's last token predicts nothing across the boundary.
  row["labels"][start] = tokenize.IGNORE
  row["segment_ids"][start:end] = int(row["segment_ids"].max()) + 1
  row["positions"][start:end] = element["positions"][:n]
  first, m = int(row["num_images"]), int(element["num_images"])
  row["pixels_uint8"][first:first + m] = element["pixels_uint8"][:m]
  row["num_images"] = np.int32(first + m)


def _reason_kind(reason: str) -> str:
  """Groups reasons for counting: the text before the first ':' ("missing_image", ...)."""
  return reason.split(":", 1)[0].strip()[:60]


def _find_skip_stats(state: Any) -> list[dict[str, Any]]:
  """Every batching iterator's skip stats inside a (possibly multi-worker) Grain state."""
  if isinstance(state, dict):
    if "skip_stats" in state:
      return [state["skip_stats"]]
    return [s for v in state.values() for s in _find_skip_stats(v)]
  if isinstance(state, (list, tuple)):
    return [s for v in state for s in _find_skip_stats(v)]
  return []


class TrainIterator(grain.DatasetIterator):
  """What make_train_iterator returns: batches, checkpointable state, the skip report.

  Sums the skip counts of all batching iterators (one per worker) and logs each epoch's
  report once every worker has finished that epoch.
  """

  def __init__(self, parent: grain.DatasetIterator, reasons_shown: int, num_workers: int):
    super().__init__(parent)
    self._shown = reasons_shown
    self._num_workers = num_workers
    self._logged_epoch = -1      # last epoch whose report was logged
    self._warned = False

  def __next__(self) -> dict[str, np.ndarray]:
    rows = next(self._parent)
    # Plain copies: with workers, `rows` are views of Grain's shared memory, which is unlinked only
    # when they are dropped; a batch still held at exit (the last one) would leak its segments.
    batch = {k: np.array(rows[k]) for k in BATCH_KEYS[:-1]}
    batch["pixels"] = model_pixels(np.asarray(rows["pixels_uint8"]), rows["num_images"])
    del rows
    stats = _find_skip_stats(self._parent.get_state())
    finished = min(s["epoch"] for s in stats) - 1
    for epoch in range(self._logged_epoch + 1, finished + 1):
      self._log_epoch(epoch, stats)
    self._logged_epoch = max(self._logged_epoch, finished)
    if not self._warned:
      fixed = [rec for s in stats for rec, note in s["total"]["first_notes"]
               if note.startswith("image_without_token")]
      if fixed:
        self._warned = True
        logging.warning("record %s has an image but no <image> in its text; prepended <image>\\n "
                        "(further cases are counted in skip_report()['total']['notes'])", fixed[0])
    return batch

  def _log_epoch(self, epoch: int, stats: list[dict[str, Any]]) -> None:
    merged = _empty_stats()
    for s in stats:
      if str(epoch) in s["epochs"]:
        _add_stats(merged, s["epochs"][str(epoch)], self._shown)
    logging.info("data epoch %d: %d samples used, %d skipped %s, fixed %s", epoch, merged["used"],
                 merged["skipped"], merged["by_reason"], merged["notes"])
    for record_id, reason in merged["first"]:
      logging.info("  skipped record %s: %s", record_id, reason)

  def skip_report(self) -> dict[str, Any]:
    """{"epoch", "this_epoch": stats, "total": stats}; stats = used, skipped, by_reason,
    notes (samples used after a repair or truncation), first / first_notes (up to
    data.skip_reasons_shown [record id, reason] pairs). "epoch" is the slowest worker's."""
    stats = _find_skip_stats(self._parent.get_state())
    epoch = min(s["epoch"] for s in stats)
    this_epoch, total = _empty_stats(), _empty_stats()
    for s in stats:
      _add_stats(total, s["total"], self._shown)
      if str(epoch) in s["epochs"]:
        _add_stats(this_epoch, s["epochs"][str(epoch)], self._shown)
    return {"epoch": epoch, "this_epoch": this_epoch, "total": total}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "logged_epoch": self._logged_epoch,
            "warned": self._warned, "num_workers": self._num_workers}

  def set_state(self, state: dict[str, Any]) -> None:
    if state["num_workers"] != self._num_workers:
      raise ValueError(f"the data iterator state was saved with data.num_workers="
                       f"{state['num_workers']} (batch order depends on it); resume with that "
                       f"value instead of {self._num_workers}")
    self._parent.set_state(state["parent"])
    self._logged_epoch = state["logged_epoch"]
    self._warned = state["warned"]


class _TrainDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, reasons_shown: int, num_workers: int):
    super().__init__(parent)
    self.reasons_shown = reasons_shown
    self.num_workers = num_workers

  def __iter__(self) -> TrainIterator:
    return TrainIterator(self._parent.__iter__(), self.reasons_shown, self.num_workers)


# ---------------------------------------------------------------------------------------------
# Public entry.


def make_dataset(data_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict, *,
                 global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The whole pipeline as a Grain IterDataset (iterating it gives a TrainIterator)."""
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}")
  config_check.check(data_cfg, "data")
  source = make_source(data_cfg)
  # Each host reads only its own slice of the records.
  ds = source[process_index::process_count]
  epoch_size = len(ds)
  if epoch_size == 0:
    raise ValueError(f"host {process_index} of {process_count} has no records in "
                     f"{data_cfg.path!r}")
  ds = ds.shuffle(seed=seed).repeat(None)   # Grain reshuffles each epoch (seed + epoch).
  ds = ds.map_with_index(SampleBuilder(data_cfg, model_cfg, seed))
  ds = ds.to_iter_dataset()
  ds = _SkipAndBatchDataset(ds, global_batch_size // process_count, epoch_size,
                            strict=data_cfg.on_error == "strict",
                            reasons_shown=data_cfg.skip_reasons_shown, pack=data_cfg.pack)
  if data_cfg.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()   # Grain's worker start-up reads absl flags.
    # Workers batch their own slice of the stream; only whole batches cross processes.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_cfg.num_workers, per_worker_buffer_size=data_cfg.worker_buffer_size),
        worker_init_fn=exit_with_parent)
  return _TrainDataset(ds, data_cfg.skip_reasons_shown, data_cfg.num_workers)


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: the worker ends itself once its parent is gone.

  A trainer killed with SIGKILL cannot stop its workers, which would go on decoding (and holding
  ~0.5 GB each) for minutes. A daemon thread notices the re-parenting within a second.
  """
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)   # no clean-up to wait for: the consumer of our batches is dead

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_PARENT_POLL_SECONDS = 0.5


def make_train_iterator(data_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                        *, global_batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """An endless iterator of this host's batches (see the module docstring)."""
  return iter(make_dataset(data_cfg, model_cfg, global_batch_size=global_batch_size, seed=seed,
                           process_index=process_index, process_count=process_count))


def iterate_samples(data_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                    seed: int = 0) -> Iterator[tuple[records_lib.Record, dict[str, Any]]]:
  """Source order, no shuffling: (example, SampleBuilder element) — for tools and tests."""
  source = make_source(data_cfg)
  builder = SampleBuilder(data_cfg, model_cfg, seed)
  for i in range(len(source)):
    yield source[i], builder(i, source[i])
