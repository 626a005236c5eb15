"""LLaVA data records: reading JSON / JSONL files and checking each record.

A record is LLaVA's format:
  {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",   # optional; str or [str]
   "conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"},
                     {"from": "gpt", "value": "The ..."}, ...]}
`image` paths are relative to an image folder; records without `image` are text-only.

API (stable; the pipeline, the validator and training start-up use it):
  read_records(path) -> list[Record | BadLine]     whole file; `iter_records` streams JSONL.
  check_record(rec, image_dir=None, ...) -> list[Problem]     every problem, [] when clean.
  images_of(rec) -> list[str]                      relative image paths, in order.
  image_paths(rec, image_dir) -> list[str]         the same joined to the folder.
  turns_of(rec) -> list[Turn]                      (role, text) pairs; RecordError if malformed.
  Problem.error() -> RecordError                   for strict mode.

A `BadLine` stands for a JSONL line (or list entry) that is not a JSON object; it never stops
the other lines from being read. Each `Problem` has a `kind` (a key of `PROBLEM_KINDS`) and a
`severity`: "error" means the record cannot be trained on (the pipeline skips it, or stops in
strict mode); "warning" means the pipeline repairs it (e.g. prepends the missing `<image>`) and
uses it, but strict mode still refuses it.
"""

from collections.abc import Iterator
import dataclasses
import json
import os
from typing import NamedTuple

from llava_jax import errors
from llava_jax.data import image as image_lib

IMAGE_TOKEN = "<image>"
BUILD_ERROR = "build_error"   # kind of any unexpected failure caught at a record's boundary
HUMAN, GPT = "human", "gpt"
ERROR, WARNING, INFO = "error", "warning", "info"   # info: reported, trained on as written

# kind -> (severity, what it means). The validator's summary table is keyed by these.
PROBLEM_KINDS = {
    "malformed_json": (ERROR, "a JSONL line (or the file) is not valid JSON"),
    "not_an_object": (ERROR, "an entry is valid JSON but not an object"),
    "missing_id": (WARNING, "no `id`; the record is named by its file position"),
    "missing_conversations": (ERROR, "no `conversations`, or an empty list"),
    "bad_conversations": (ERROR, "`conversations` is not a list"),
    "bad_turn": (ERROR, "a turn is not {from: str, value: str}"),
    "unknown_role": (ERROR, "a turn's `from` is not human or gpt"),
    "roles_not_alternating": (ERROR, "turns must alternate human/gpt, start with human, end "
                                     "with gpt"),
    "leading_gpt_turn": (WARNING, "the first turn is gpt's (dropped, as LLaVA does)"),
    "special_text_in_answer": (INFO, "an answer holds </s>, <s> or a round separator (trained "
                                     "on as written; LLaVA masks the whole sample)"),
    "empty_turn": (ERROR, "a turn's text is empty"),
    "bad_image_field": (ERROR, "`image` is not a non-empty string or list of them"),
    "image_token_without_image": (ERROR, "`<image>` in the text but the record has no image"),
    "image_token_mismatch": (ERROR, "number of `<image>` differs from number of images"),
    "image_token_in_answer": (ERROR, "`<image>` inside a gpt answer"),
    "image_without_token": (WARNING, "images but no `<image>` in the text (pipeline prepends it)"),
    "too_many_images": (ERROR, "more images than the model takes (max_images)"),
    "invalid_text": (ERROR, "text that is not valid Unicode (a lone surrogate such as \\ud800)"),
    "build_error": (ERROR, "reading or building the record failed unexpectedly (named)"),
    **{kind: (ERROR, "image file: " + kind.replace("_", " ")) for kind in
       image_lib.IMAGE_ERROR_KINDS},
}


class RecordError(ValueError, errors.UserError):
  """A record that cannot be used, naming the record, the field and the reason."""

  def __init__(self, record_id: str | None, field: str, reason: str, *, kind: str = "",
               where: str = ""):
    location = f" ({where})" if where and where != record_id else ""
    super().__init__(f"record {record_id!r}{location}: {field}: {reason}")
    self.record_id = record_id
    self.field = field
    self.reason = reason
    self.kind = kind
    self.where = where


@dataclasses.dataclass(frozen=True)
class Problem:
  record_id: str
  where: str     # "file:line" (JSONL) or "file[index]" (JSON list)
  field: str     # "conversations[2].from", "image[1]", ...
  kind: str      # key of PROBLEM_KINDS
  message: str

  @property
  def severity(self) -> str:
    return PROBLEM_KINDS[self.kind][0]

  def error(self) -> RecordError:
    return RecordError(self.record_id, self.field, self.message, kind=self.kind, where=self.where)

  def __str__(self) -> str:
    return f"{self.record_id} ({self.where}) {self.field}: {self.message} [{self.kind}]"


@dataclasses.dataclass(frozen=True)
class Record:
  """One entry of a data file at every stage: read here, stored in shards, fed to the pipeline.

  An entry that could not be read travels too (`data` None, `problem` says why), so the pipeline
  skips it with the same id and reason whether it reads the JSON file or prepared shards.
  """
  id: str        # the record's `id`, or its position when it has none
  data: dict | None  # the JSON object as read; None when the entry could not be read
  where: str     # "file:line" or "file[index]"
  problem: tuple[str, str] | None = None  # (kind, message) when data is None
  # Prepared shards: the encoded image files in `image` order (None: unreadable at prepare time);
  # None here: read them from the image folder.
  images: tuple[bytes | None, ...] | None = None


@dataclasses.dataclass(frozen=True)
class BadLine:
  """An entry that could not be read as a record; `id` is its position."""
  where: str
  kind: str      # "malformed_json" | "not_an_object"
  message: str

  @property
  def id(self) -> str:
    return self.where


class Turn(NamedTuple):
  role: str      # "human" | "gpt"
  text: str


# ---------------------------------------------------------------- reading


def read_records(path: str | os.PathLike) -> list[Record | BadLine]:
  """All entries of a LLaVA JSON list or JSONL file, in file order."""
  return list(iter_records(path))


def iter_records(path: str | os.PathLike) -> Iterator[Record | BadLine]:
  """Yields entries of a JSON list (`[...]`) or JSONL file; the format is read from the content.

  Raises RecordError only when a JSON-list file as a whole is not valid JSON (one bad line of a
  JSONL file becomes a BadLine instead).
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(4096)
  # A UTF-8 byte-order mark (Windows editors write one) is not part of the content.
  if head.removeprefix(_BOM).lstrip().startswith(b"["):
    yield from _iter_json_list(path)
  else:
    yield from _iter_jsonl(path)


_BOM = b"\xef\xbb\xbf"


def make_record(obj, where: str) -> Record | BadLine:
  """The Record of one parsed JSON entry at `where`, or a BadLine if it is not an object."""
  if not isinstance(obj, dict):
    return BadLine(where, "not_an_object", f"expected a JSON object, got {type(obj).__name__}")
  record_id = obj.get("id")
  return Record(str(record_id) if record_id not in (None, "") else where, obj, where)


def _iter_json_list(path: str) -> Iterator[Record | BadLine]:
  try:
    with open(path, encoding="utf-8-sig") as f:
      entries = json.load(f)
  except json.JSONDecodeError as e:
    raise RecordError(None, "<file>", f"not valid JSON: {e.msg} at line {e.lineno} column "
                      f"{e.colno}", kind="malformed_json", where=path) from None
  except UnicodeDecodeError as e:
    raise RecordError(None, "<file>", f"not UTF-8: {e}", kind="malformed_json",
                      where=path) from None
  for index, obj in enumerate(entries):
    yield make_record(obj, f"{path}[{index}]")


def _iter_jsonl(path: str) -> Iterator[Record | BadLine]:
  with open(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      where = f"{path}:{line_number}"
      if not raw.strip():
        continue
      try:
        obj = json.loads(raw.decode("utf-8-sig" if line_number == 1 else "utf-8"))
      except UnicodeDecodeError as e:
        yield BadLine(where, "malformed_json", f"not UTF-8: {e.reason} at byte {e.start}")
        continue
      except json.JSONDecodeError as e:
        yield BadLine(where, "malformed_json", f"not valid JSON: {e.msg} at column {e.colno}")
        continue
      yield make_record(obj, where)


# ---------------------------------------------------------------- accessors


def images_of(rec: Record) -> list[str]:
  """Relative image paths of a record ([] for text-only). RecordError if `image` is malformed."""
  value = rec.data.get("image")
  if value is None:
    return []
  items = [value] if isinstance(value, str) else value
  if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
    raise RecordError(rec.id, "image", "must be a non-empty string or a list of them, got "
                      f"{json.dumps(value)[:80]}", kind="bad_image_field", where=rec.where)
  return list(items)


def image_paths(rec: Record, image_dir: str | os.PathLike) -> list[str]:
  return [os.path.join(os.fspath(image_dir), p) for p in images_of(rec)]


def turns_of(rec: Record) -> list[Turn]:
  """The conversation as (role, text) pairs. RecordError naming the first structural problem."""
  for problem in _conversation_problems(rec):
    if problem.severity == ERROR:
      raise problem.error()
  return [Turn(t["from"], t["value"]) for t in rec.data["conversations"]]


# ---------------------------------------------------------------- checking


def check_record(rec: Record | BadLine, image_dir: str | os.PathLike | None = None, *,
                 decode_images: bool = True, max_images: int | None = None,
                 allow_format_mismatch: bool = False) -> list[Problem]:
  """Every problem of one record ([] if none).

  Args:
    rec: a Record or BadLine from read_records.
    image_dir: folder the `image` paths are relative to; None skips the file checks.
    decode_images: decode each image fully (catches truncated/corrupt files); False only checks
      that the file exists and is not empty.
    max_images: the model's M; more images than that is a problem. None: no limit.
    allow_format_mismatch: accept images whose content differs from their extension.
  """
  if isinstance(rec, BadLine):
    return [Problem(rec.where, rec.where, "<line>", rec.kind, rec.message)]
  problems = []
  if rec.data.get("id") in (None, ""):
    problems.append(_problem(rec, "id", "missing_id", "record has no id"))
  problems += _conversation_problems(rec)
  problems += _image_problems(rec, image_dir, decode_images, max_images, allow_format_mismatch)
  return problems


def _problem(rec: Record, field: str, kind: str, message: str) -> Problem:
  return Problem(rec.id, rec.where, field, kind, message)


def _conversation_problems(rec: Record) -> list[Problem]:
  if "conversations" not in rec.data:
    return [_problem(rec, "conversations", "missing_conversations", "field is missing")]
  turns = rec.data["conversations"]
  if not isinstance(turns, list):
    return [_problem(rec, "conversations", "bad_conversations",
                     f"expected a list, got {type(turns).__name__}")]
  if not turns:
    return [_problem(rec, "conversations", "missing_conversations", "the list is empty")]
  problems = []
  roles = []
  for i, turn in enumerate(turns):
    field = f"conversations[{i}]"
    if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(
        turn.get("value"), str):
      problems.append(_problem(rec, field, "bad_turn",
                               f"expected {{from: str, value: str}}, got {json.dumps(turn)[:80]}"))
      roles.append(None)
      continue
    role = turn["from"]
    roles.append(role)
    if role not in (HUMAN, GPT):
      problems.append(_problem(rec, f"{field}.from", "unknown_role",
                               f"role {role!r} is not {HUMAN!r} or {GPT!r}"))
    if not turn["value"].strip():
      problems.append(_problem(rec, f"{field}.value", "empty_turn", "the text is empty"))
    elif not _is_valid_unicode(turn["value"]):
      problems.append(_problem(rec, f"{field}.value", "invalid_text",
                               "contains a lone surrogate (not encodable as UTF-8)"))
    if role == GPT and IMAGE_TOKEN in turn["value"]:
      problems.append(_problem(rec, f"{field}.value", "image_token_in_answer",
                               f"{IMAGE_TOKEN} appears in an answer"))
  if all(r in (HUMAN, GPT) for r in roles):
    first = 0
    if len(roles) > 1 and roles[0] == GPT:
      problems.append(_problem(rec, "conversations[0].from", "leading_gpt_turn",
                               "the first turn is gpt's; it is dropped"))
      first = 1
    for i, role in enumerate(roles[first:], start=first):
      expected = HUMAN if (i - first) % 2 == 0 else GPT
      if role != expected:
        problems.append(_problem(rec, f"conversations[{i}].from", "roles_not_alternating",
                                 f"turn {i} is {role!r}; expected {expected!r} (human/gpt "
                                 "alternate, human first)"))
        break
    else:
      if (len(roles) - first) % 2:
        problems.append(_problem(rec, f"conversations[{len(roles) - 1}]", "roles_not_alternating",
                                 "ends with a human turn that has no answer"))
  return problems


def _is_valid_unicode(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _image_token_count(rec: Record) -> int:
  turns = rec.data.get("conversations")
  if not isinstance(turns, list):
    return 0
  return sum(t["value"].count(IMAGE_TOKEN) for t in turns
             if isinstance(t, dict) and isinstance(t.get("value"), str))


def _image_token_problems(rec: Record, images: list[str]) -> list[Problem]:
  tokens = _image_token_count(rec)
  if tokens and not images:
    return [_problem(rec, "conversations", "image_token_without_image",
                     f"{tokens} {IMAGE_TOKEN} in the text but the record has no image")]
  if images and not tokens:
    return [_problem(rec, "conversations", "image_without_token",
                     f"{len(images)} image(s) but no {IMAGE_TOKEN} in the text")]
  if tokens != len(images):
    return [_problem(rec, "conversations", "image_token_mismatch",
                     f"{tokens} {IMAGE_TOKEN} in the text but {len(images)} images")]
  return []


def _image_problems(rec: Record, image_dir, decode_images: bool, max_images: int | None,
                    allow_format_mismatch: bool) -> list[Problem]:
  try:
    images = images_of(rec)
  except RecordError as e:
    return [_problem(rec, "image", "bad_image_field", e.reason)]
  # Without a conversation (already reported) there is no text to count <image> in.
  conversation = rec.data.get("conversations")
  has_text = isinstance(conversation, list) and bool(conversation)
  problems = _image_token_problems(rec, images) if has_text else []
  if max_images is not None and len(images) > max_images:
    problems.append(_problem(rec, "image", "too_many_images",
                             f"{len(images)} images; the model takes at most {max_images}"))
  if image_dir is not None:
    for i, path in enumerate(image_paths(rec, image_dir)):
      field = "image" if isinstance(rec.data.get("image"), str) else f"image[{i}]"
      error = _image_file_error(path, decode_images, allow_format_mismatch)
      if error is not None:
        problems.append(_problem(rec, field, error.kind, f"{path}: {error.reason}"))
  return problems


def _image_file_error(path: str, decode: bool,
                      allow_format_mismatch: bool) -> image_lib.ImageError | None:
  try:
    if decode:
      image_lib.load_image(path, allow_format_mismatch=allow_format_mismatch)
    else:
      image_lib.check_image_file(path)
  except image_lib.ImageError as e:
    return e
  return None
