"""What the user sees during training: a tqdm bar, `WORKDIR/metrics.jsonl`, TensorBoard events.

Only process 0 writes. The loop hands over each step's metrics one step late (after the next
step is dispatched), so reading them never stalls the device.
"""

import json
import math
import os
import pathlib
import time

from absl import logging
import jax
import tqdm

from llava_jax import errors

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsFileError(ValueError, errors.UserError):
  """A metrics.jsonl line other than the last is not JSON: the file was edited or damaged."""


def read_metrics(workdir) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl. A torn last line (the process was killed while
  writing it) is dropped with a warning naming the file; any other bad line raises."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  lines = path.read_text(errors="replace").splitlines()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if number < len(lines):
        raise MetricsFileError(f"{path}:{number}: not a JSON record ({e})") from None
      logging.warning("%s:%d: dropped a torn last line (the run was killed while writing it): "
                      "%.60r", path, number, line)
  return records


class Reporter:
  """Progress bar + metrics JSONL + TensorBoard for steps `first_step+1 .. total_steps`."""

  def __init__(self, workdir, first_step: int, total_steps: int, log_every_steps: int):
    self.enabled = jax.process_index() == 0
    self.log_every_steps = log_every_steps
    self.last_time = None
    self.path = pathlib.Path(workdir) / METRICS_FILE
    if not self.enabled:
      return
    self._drop_lines_after(first_step)
    self.file = self.path.open("a")
    # Imported here: tensorboardX pulls in protobuf, which only process 0 needs.
    import tensorboardX
    self.tb = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / TENSORBOARD_DIR))
    self.bar = tqdm.tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)

  def _drop_lines_after(self, step: int):
    """On resume, forget metrics of steps the restored checkpoint does not contain."""
    kept = [m for m in read_metrics(self.path.parent) if m["step"] <= step]
    self.path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a kill during the rewrite never loses the old lines.
    tmp = self.path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
    os.replace(tmp, self.path)

  def report(self, step: int, metrics: dict) -> dict:
    """`metrics`: host values of step `step` (1-based: the number of updates done)."""
    now = time.perf_counter()
    # The first step's time includes compilation: not a throughput.
    seconds = now - self.last_time if self.last_time is not None else None
    self.last_time = now
    record = {"step": step, **{k: _plain(v) for k, v in metrics.items()},
              "time": time.time(), "step_seconds": seconds,
              "tokens_per_sec": metrics["tokens"] / seconds if seconds else None}
    if not self.enabled:
      return record
    self.bar.update(step - self.bar.n)
    self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                         tok_s=f"{record['tokens_per_sec'] or 0:.0f}", refresh=False)
    if step % self.log_every_steps == 0 or step == self.bar.total:
      self.file.write(json.dumps(record) + "\n")
      self.file.flush()
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self.tb.add_scalar(f"train/{k}", v, step)
    return record

  def write(self, message: str):
    """A line above the progress bar (process 0 only)."""
    if self.enabled:
      self.bar.write(message)

  def close(self):
    if self.enabled:
      self.bar.close()
      self.file.close()
      self.tb.close()


def _plain(value):
  """numpy scalar → Python number (JSON-able; float32 → float is exact)."""
  value = value.item() if hasattr(value, "item") else value
  return bool(value) if isinstance(value, bool) else value
