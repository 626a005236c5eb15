"""Pre-flight check of a LLaVA data file and its images, before any compute is spent.

  python -m llava_jax.data.validate --data=llava.json --images=DIR [--strict]

Prints every problem of every record (by record id and file position), then a summary table
(problem kind -> severity, count, first ids). Images are checked by decoding them, so missing,
empty, truncated and mislabelled files are all found. Exit status: 0, or 1 in `--strict` mode
when there is any problem (warnings included); 2 if the file itself cannot be read or holds no
record. A check that fails unexpectedly on one record is reported as that record's
`build_error`, never stops the others.
Answers holding `</s>`, `<s>` or a round separator of `--template` (default: every template's)
are reported as `special_text_in_answer` (info: trained on as written, never refused at start-up;
LLaVA would mask the whole sample).

Importable: `validate(path, image_dir) -> Report`; training runs `check(config.data)` at
start-up (file checks without decoding, so it stays quick on large sets; the CLI decodes).
"""

import collections
import concurrent.futures
import dataclasses
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections

from llava_jax import errors
from llava_jax.data import conversation
from llava_jax.data import records as records_lib


class EmptyDataError(ValueError, errors.UserError):
  """A data file with no records at all: nothing to train on."""


@dataclasses.dataclass
class Report:
  """Problems found in one data file."""
  path: str
  num_records: int                       # entries read, BadLines included
  problems: list[records_lib.Problem]    # in file order

  @property
  def clean(self) -> bool:
    return not self.problems

  def counts(self) -> dict[str, int]:
    """problem kind -> count, most frequent first."""
    return dict(collections.Counter(p.kind for p in self.problems).most_common())

  def ids(self, kind: str) -> list[str]:
    """Record ids with a problem of `kind`, in file order, without repeats."""
    return list(dict.fromkeys(p.record_id for p in self.problems if p.kind == kind))

  def records_with(self, severity: str) -> set[str]:
    """Ids of records having at least one problem of that severity."""
    return {p.record_id for p in self.problems if p.severity == severity}

  def table(self, max_ids: int = 3) -> str:
    """The summary: one row per problem kind, then totals."""
    rows = [("problem", "severity", "count", "first ids")]
    for kind, count in self.counts().items():
      ids = self.ids(kind)
      shown = ", ".join(ids[:max_ids]) + (f", ... (+{len(ids) - max_ids})" if len(ids) > max_ids
                                          else "")
      rows.append((kind, records_lib.PROBLEM_KINDS[kind][0], str(count), shown))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}"
             for r in rows]
    errors = self.records_with(records_lib.ERROR)
    warnings = self.records_with(records_lib.WARNING) - errors
    lines.append(f"{self.num_records} records in {self.path}: {len(errors)} with errors "
                 f"(skipped in skip mode), {len(warnings)} with warnings only (used after repair)")
    return "\n".join(lines)

  def raise_if_problems(self) -> None:
    """Strict mode: a RecordError naming the first problem (info kinds are trained on)."""
    refused = [p for p in self.problems if p.severity != records_lib.INFO]
    if refused:
      first = refused[0].error()
      raise records_lib.RecordError(
          first.record_id, first.field,
          f"{first.reason} [{first.kind}] (and {len(refused) - 1} more problems; run "
          f"python -m llava_jax.data.validate --data={self.path} for all)",
          kind=first.kind, where=first.where)


def validate(path: str | os.PathLike, image_dir: str | os.PathLike | None, *,
             decode_images: bool = True, max_images: int | None = None,
             allow_format_mismatch: bool = False, num_threads: int | None = None,
             template: str | None = None) -> Report:
  """Checks every record of `path` (and its images under `image_dir`, unless None).

  `template`: the round separators looked for in answers (None: every template's).

  Image decoding runs on `num_threads` threads (Pillow decodes without the GIL); default: CPUs.
  Raises RecordError if the file as a whole is not readable JSON.
  """
  entries = records_lib.read_records(path)

  def check(entry):
    try:
      return records_lib.check_record(entry, image_dir, decode_images=decode_images,
                                      max_images=max_images,
                                      allow_format_mismatch=allow_format_mismatch) + (
                                          _answer_problems(entry, template))
    except Exception as e:  # noqa: BLE001 - the record boundary: name the record, go on.
      return [records_lib.Problem(entry.id, entry.where, "<record>", records_lib.BUILD_ERROR,
                                  f"{type(e).__name__}: {e}")]

  threads = num_threads or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
    problems = [p for found in pool.map(check, entries) for p in found]
  return Report(os.fspath(path), len(entries), problems)


def _answer_problems(entry, template: str | None) -> list[records_lib.Problem]:
  """Answers holding special-token text or a round separator (kind special_text_in_answer)."""
  if isinstance(entry, records_lib.BadLine):
    return []
  turns = entry.data.get("conversations")
  if not isinstance(turns, list):
    return []
  pairs = [(t.get("from"), t.get("value")) if isinstance(t, dict) and isinstance(
      t.get("value"), str) else (None, "") for t in turns]
  return [records_lib.Problem(entry.id, entry.where, f"conversations[{i}].value",
                              "special_text_in_answer", message)
          for i, message in conversation.answer_problems(pairs, template)]


def check(data_config: ml_collections.ConfigDict,
          model_config: ml_collections.ConfigDict | None = None, *,
          decode_images: bool = False) -> Report | None:
  """Training start-up check of `config.data` (`path`, `image_dir`, `max_images`, `on_error`).

  `on_error == "strict"`: raises RecordError naming the first problem. `"skip"`: logs the summary
  table; the pipeline then skips the records with errors. A directory `path` (ArrayRecord shards
  from `llava_jax.data.prepare`, checked when written) returns None. `model_config` is accepted
  so callers can pass the same pair as to the pipeline; the check does not need it.
  """
  del model_config
  if os.path.isdir(data_config.path):
    logging.info("validate: %s holds prepared shards; records were checked when written",
                 data_config.path)
    return None
  report = validate(data_config.path, data_config.image_dir, decode_images=decode_images,
                    max_images=data_config.max_images, template=data_config.template)
  if not report.num_records:
    raise EmptyDataError(f"data.path {report.path!r} holds no records")
  if report.clean:
    logging.info("validate: %d records in %s, no problems", report.num_records, report.path)
    return report
  if data_config.on_error == "strict":
    report.raise_if_problems()
  logging.warning("validate: problems in %s (on_error=%s)\n%s", report.path,
                  data_config.on_error, report.table())
  return report


def define_flags() -> None:
  """CLI flags; defined only when run as a program, so importing `validate` defines none."""
  flags.DEFINE_string("data", None, "LLaVA JSON or JSONL file.", required=True)
  flags.DEFINE_string("images", None, "Folder the `image` paths are relative to; omit to check "
                      "the text only.")
  flags.DEFINE_bool("strict", False, "Exit 1 if any problem (warnings included).")
  flags.DEFINE_bool("decode", True, "Decode every image (else only check the files exist and "
                    "are not empty).")
  flags.DEFINE_integer("max_images", None, "Images per record the model takes.")
  flags.DEFINE_bool("allow_format_mismatch", False,
                    "Accept images whose content differs from the extension.")
  flags.DEFINE_enum("template", None, list(conversation.TEMPLATES),
                    "Template whose round separators are looked for in answers (default: all).")
  flags.DEFINE_integer("threads", None, "Decoding threads (default: CPUs).")
  flags.DEFINE_integer("max_ids", 3, "Record ids listed per row of the summary.")


def main(argv) -> int:
  del argv
  f = flags.FLAGS
  try:
    report = validate(f.data, f.images, decode_images=f.decode, max_images=f.max_images,
                      allow_format_mismatch=f.allow_format_mismatch, num_threads=f.threads,
                      template=f.template)
  except (records_lib.RecordError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not report.num_records:
    print(f"error: {report.path}: no records (an empty file or an empty list)", file=sys.stderr)
    return 2
  for problem in report.problems:
    print(f"{problem.severity}: {problem}")
  if report.clean:
    print(f"{report.num_records} records in {report.path}: no problems found")
  else:
    print()
    print(report.table(f.max_ids))
  return 1 if f.strict and not report.clean else 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
