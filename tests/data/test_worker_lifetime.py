"""Grain worker processes end with their parent, even when it is killed with SIGKILL."""

import os
import pathlib
import signal
import subprocess
import sys
import time

from absl.testing import absltest

import tiny

REPO = tiny.REPO

_TRAINER = """
import sys, time
from absl import flags
from llava_jax.config import schema
from llava_jax.data import pipeline
data = schema.data_config()
data.num_workers = 2
it = pipeline.make_train_iterator(data, schema.model_config("tiny"), global_batch_size=2, seed=0)
next(it)
print("ready", flush=True)
time.sleep(600)
"""


def _descendants(pid):
  found, todo = [], [pid]
  while todo:
    p = todo.pop()
    for task in pathlib.Path(f"/proc/{p}/task").glob("*"):
      try:
        children = [int(c) for c in (task / "children").read_text().split()]
      except OSError:
        continue
      found += children
      todo += children
  return found


def _alive(pid):
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
  except OSError:
    return False
  return state != "Z"


class WorkerLifetimeTest(absltest.TestCase):

  def test_workers_exit_when_the_trainer_is_killed(self):
    proc = subprocess.Popen([sys.executable, "-c", _TRAINER], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)))
    workers = []
    try:
      self.assertEqual(proc.stdout.readline().strip(), b"ready")
      workers = _descendants(proc.pid)
      self.assertGreaterEqual(len(workers), 2)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      deadline = time.time() + 20
      while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
      self.assertEqual([w for w in workers if _alive(w)], [])
    finally:
      proc.kill()
      for w in workers:
        if _alive(w):
          os.kill(w, signal.SIGKILL)


if __name__ == "__main__":
  absltest.main()
