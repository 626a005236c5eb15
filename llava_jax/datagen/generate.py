"""Runs the three generators over image annotations and writes LLaVA records, resumably.

Output directory layout:
  <type>.jsonl            accepted records, one per line (append-only journal)
  <type>.rejected.jsonl   {"id", "reason", "response"} for responses that were dropped
  llava_instruct.json     all accepted records of the requested types (what training reads)
  stats.json              counts per type (written, rejected by reason, failed, ...)
Ids already in either journal are skipped on a re-run, so a run can be stopped (budget,
crash, Ctrl-C) and restarted without paying twice. Failed requests (API errors after the
retries, or a wrong key or model name) are not journaled and are tried again on the next run;
a request the endpoint rejects as such (400, 413, 422, e.g. too long) is journaled as rejected.
"""

import collections
import dataclasses
import os
import random
from typing import Sequence

import tqdm

from llava_jax import openai_client as client_lib
from llava_jax.data import records as records_lib
from llava_jax.datagen import context as context_lib
from llava_jax.datagen import journal as journal_lib
from llava_jax.datagen import parse
from llava_jax.datagen import prompts
from llava_jax.datagen.annotations import ImageAnnotation

MERGED_FILE = "llava_instruct.json"
# Statuses that reject one request's content; 401/403/404 (key, model name) stay failures, so
# that fixing the configuration and re-running retries them.
REQUEST_REJECTED = frozenset({400, 413, 422})


@dataclasses.dataclass
class TypeStats:
  total: int = 0          # records of this type in the output after the run
  new: int = 0            # records written by this run
  skipped: int = 0        # ids already finished by an earlier run
  rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  failed: int = 0         # API errors after retries (retried on the next run)
  not_sent: int = 0       # left when the request budget ran out

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["rejected"] = dict(sorted(self.rejected.items()))
    return d


@dataclasses.dataclass(frozen=True)
class Job:
  """One request: an image's annotations and the kind of record to generate from them."""
  kind: str
  ann: ImageAnnotation

  @property
  def id(self) -> str:
    return f"{self.ann.id}-{self.kind}"


def run(annotations: Sequence[ImageAnnotation], types: Sequence[str],
        client: client_lib.ChatClient, out_dir: str, *, images_dir: str | None = None,
        concurrency: int = 4, temperature: float = 0.2, max_tokens: int = 1024,
        seed: int = 0, prompts_dir: str = prompts.PROMPTS_DIR,
        progress: bool = True) -> dict[str, TypeStats]:
  """Generates records for every (annotation, type) not yet in `out_dir`; returns counts."""
  for kind in types:
    if kind not in prompts.TYPES:
      raise ValueError(f"unknown generator type {kind!r}; choose from {sorted(prompts.TYPES)}")
  os.makedirs(out_dir, exist_ok=True)
  accepted = {k: journal_lib.Journal(os.path.join(out_dir, f"{k}.jsonl")) for k in types}
  rejected = {k: journal_lib.Journal(os.path.join(out_dir, f"{k}.rejected.jsonl")) for k in types}
  stats = {k: TypeStats() for k in types}
  seen_keys = {parse.dedup_key(r) for k in types for r in accepted[k].records}

  jobs, queued = [], set()
  for ann in annotations:
    for kind in types:
      job = Job(kind, ann)
      if job.id in accepted[kind].ids or job.id in rejected[kind].ids:
        stats[kind].skipped += 1
      elif job.id in queued:
        stats[kind].rejected["repeated_image_id"] += 1  # Record ids must stay unique.
      elif images_dir is not None and not os.path.exists(os.path.join(images_dir, ann.image)):
        stats[kind].rejected["missing_image"] += 1  # Not journaled: tried again if it appears.
      else:
        jobs.append(job)
        queued.add(job.id)

  def work(job: Job) -> dict:
    context = context_lib.symbolic_context(job.ann, with_boxes=prompts.TYPES[job.kind])
    text, finish_reason = client.complete_choice(
        prompts.load(job.kind, prompts_dir).messages(context), temperature=temperature,
        max_tokens=max_tokens)
    try:
      if finish_reason == "length":  # Cut off by max_tokens: the last answer is incomplete.
        raise parse.Rejected("truncated")
      return to_record(job, text, seed)
    except parse.Rejected as e:
      return {"id": job.id, "reason": e.reason, "response": text}

  finished = 0
  bar = tqdm.tqdm(total=len(jobs), desc="datagen", unit="req", disable=not progress)
  try:
    for job, result, error in client_lib.map_concurrently(work, jobs, concurrency):
      finished += 1
      bar.update(1)
      s = stats[job.kind]
      if isinstance(error, client_lib.BudgetExhausted):
        s.not_sent += 1
      elif isinstance(error, client_lib.ApiError) and error.status in REQUEST_REJECTED:
        # The endpoint refused this request itself (e.g. too long): retrying cannot help.
        s.rejected[f"http_{error.status}"] += 1
        rejected[job.kind].append({"id": job.id, "reason": f"http_{error.status}",
                                   "response": str(error)})
      elif isinstance(error, client_lib.ApiError):
        s.failed += 1
        bar.write(f"{job.id}: {error}")
      elif error is not None:
        raise error
      elif "reason" in result:
        s.rejected[result["reason"]] += 1
        rejected[job.kind].append(result)
      elif parse.dedup_key(result) in seen_keys:
        s.rejected["duplicate"] += 1
        rejected[job.kind].append({"id": job.id, "reason": "duplicate", "response": ""})
      else:
        seen_keys.add(parse.dedup_key(result))
        accepted[job.kind].append(result)
        s.new += 1
  finally:
    bar.close()
    for job in jobs[finished:]:
      stats[job.kind].not_sent += 1
    for kind in types:
      accepted[kind].close()
      rejected[kind].close()
      stats[kind].total = len(accepted[kind].records)
    merged = [r for kind in types for r in accepted[kind].records]
    journal_lib.write_json_atomic(os.path.join(out_dir, MERGED_FILE), merged)
    journal_lib.write_json_atomic(os.path.join(out_dir, "stats.json"),
                                  {k: s.to_dict() for k, s in stats.items()})
  return stats


def to_record(job: Job, text: str, seed: int) -> dict:
  """The LLaVA record parsed from the model's `text`; raises parse.Rejected with the reason."""
  if job.kind == "detail":
    # The human turn's wording is drawn per record from a seeded RNG, so re-runs agree.
    rng = random.Random(f"{seed}:{job.id}")
    pairs = [(rng.choice(prompts.detail_instructions()), parse.parse_description(text))]
  else:
    pairs = parse.parse_qa(text)
  record = parse.to_record(job.id, job.ann.image, parse.check_content(pairs))
  # The training pipeline's own checks are the last gate: what we write, it reads.
  problems = records_lib.check_record(records_lib.Record(job.id, record, job.id))
  if problems:
    raise parse.Rejected(f"invalid_record:{problems[0].kind}", str(problems[0]))
  return record


def format_table(stats: dict[str, TypeStats]) -> str:
  """Counts per type, like LLaVA's 58K conversation / 23K detail / 77K reasoning split."""
  header = f"{'type':<10} {'total':>8} {'new':>6} {'skipped':>8} {'rejected':>9} {'failed':>7} " \
           f"{'not_sent':>9}  rejection reasons"
  lines = [header, "-" * len(header)]
  for kind, s in stats.items():
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(s.rejected.items())) or "-"
    lines.append(f"{kind:<10} {s.total:>8} {s.new:>6} {s.skipped:>8} {sum(s.rejected.values()):>9} "
                 f"{s.failed:>7} {s.not_sent:>9}  {reasons}")
  return "\n".join(lines)
