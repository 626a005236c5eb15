"""What the user sees during training: a tqdm bar, `WORKDIR/metrics.jsonl`, TensorBoard events.

Only process 0 writes. The loop hands over each step's metrics one step late (after the next
step is dispatched), so reading them never stalls the device.
"""

import json
import math
import pathlib
import time

import jax
import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    self.path.write_text("".join(json.dumps(m) + "\n" for m in kept))

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
