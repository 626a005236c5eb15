"""Multi-host training on CPU: two processes on localhost form one 8-device runtime (gloo).

Each process runs the real entry point (`python -m llava_jax.main`) with 4 fake CPU devices and
the coordinator given by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, reads its
own half of every global batch from the demo data, and trains on one (8,1,1) mesh. One host gets
SIGTERM mid-run (a preemption notice); both must stop at one agreed step, save it together, and a
relaunch must restore it and finish. The reference is a single process with 8 devices fed the same
global batches (both hosts' halves, concatenated); the per-step losses must be equal.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np

from llava_jax import sharding
from llava_jax.data import pipeline
from llava_jax.train import loop
from llava_jax.train import metrics as metrics_lib
from tests import train_fixtures
import tiny

REPO = tiny.REPO
NUM_PROCESSES = 2
STEPS = 12
PREEMPT_AFTER = 2   # SIGTERM to host 1 once step 2 is reported
TIMEOUT_S = 540   # for everything; a healthy run takes a fraction


def _config():
  config = train_fixtures.tiny_config(steps=STEPS)
  config.data.max_len = 96       # room for the demo answers after the 4 image tokens
  config.checkpoint.every_steps = 100
  return config


def _main_flags(config, workdir: pathlib.Path) -> list[str]:
  return [f"--config={REPO / 'configs' / 'finetune.py'}", f"--workdir={workdir}",
          *train_fixtures.command_line_overrides(config),
          f"--config.train.steps={config.train.steps}",
          f"--config.checkpoint.every_steps={config.checkpoint.every_steps}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _HostShards:
  """The global batch a multi-host run sees: every host's shard of the pipeline, concatenated."""

  def __init__(self, config):
    self.iterators = [
        pipeline.make_train_iterator(config.data, config.model,
                                     global_batch_size=config.train.batch_size, seed=config.seed,
                                     process_index=i, process_count=NUM_PROCESSES)
        for i in range(NUM_PROCESSES)]

  def __next__(self):
    shards = [next(it) for it in self.iterators]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}

  def get_state(self) -> bytes:   # Grain's checkpoint handler wants bytes from other iterators
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes):
    for it, s in zip(self.iterators, json.loads(state)):
      it.set_state(s)


def _start_processes(config, workdir: pathlib.Path, port: int, run: str
                     ) -> list[subprocess.Popen]:
  procs = []
  for process_id in range(NUM_PROCESSES):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "JAX_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(NUM_PROCESSES),
               JAX_PROCESS_ID=str(process_id), PYTHONPATH=str(REPO))
    with open(workdir.parent / f"{run}.process{process_id}.log", "w") as log:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "llava_jax.main", *_main_flags(config, workdir)],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs: list[subprocess.Popen], deadline: float) -> list[int | None]:
  """Exit codes of all processes; kills every one still running at `deadline` or once any fails."""
  try:
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(10)
  return [p.returncode for p in procs]


def _preempt_when_step_reached(workdir: pathlib.Path, step: int, proc: subprocess.Popen,
                               deadline: float) -> None:
  """SIGTERM to `proc` (one host, as a scheduler would) once process 0 has reported `step`."""
  while time.monotonic() < deadline and proc.poll() is None:
    if any(m["step"] >= step for m in metrics_lib.read_metrics(workdir)):
      proc.send_signal(signal.SIGTERM)
      return
    time.sleep(0.05)


def _logs(tmp: pathlib.Path, run: str) -> str:
  return "\n".join(f"--- {run} process {i} ---\n" +
                   (tmp / f"{run}.process{i}.log").read_text()[-3000:]
                   for i in range(NUM_PROCESSES))


class TwoProcessTrainingTest(absltest.TestCase):
  """Run 1: both hosts train until one of them gets SIGTERM; they agree on a step, save it
  together and exit. Run 2: both restore that checkpoint and finish. Meanwhile this process trains
  the single-host reference."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.config = _config()
    cls.workdir = cls.tmp / "two_hosts"
    cls.reference_workdir = cls.tmp / "one_host"
    deadline = time.monotonic() + TIMEOUT_S
    procs = _start_processes(cls.config, cls.workdir, _free_port(), "run1")
    preempter = threading.Thread(target=_preempt_when_step_reached,
                                 args=(cls.workdir, PREEMPT_AFTER, procs[1], deadline))
    preempter.start()
    try:
      loop.run(cls.config, cls.reference_workdir,
               loop.Data(iterator=_HostShards(cls.config), num_records=0))
    finally:
      preempter.join()
      cls.run1_exit_codes = _wait(procs, deadline)
    cls.steps_after_run1 = _committed_steps(cls.workdir)
    cls.metrics_after_run1 = metrics_lib.read_metrics(cls.workdir)
    cls.run2_exit_codes = _wait(_start_processes(cls.config, cls.workdir, _free_port(), "run2"),
                                deadline)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_a_preempted_host_stops_both_at_one_agreed_step_with_a_checkpoint(self):
    self.assertEqual(self.run1_exit_codes, [0] * NUM_PROCESSES, _logs(self.tmp, "run1"))
    self.assertLen(self.steps_after_run1, 1)
    saved = self.steps_after_run1[0]
    self.assertBetween(saved, PREEMPT_AFTER, STEPS - 1)
    # Both hosts wrote their data-iterator position into that step.
    iterator_files = sorted(
        p.name for p in (self.workdir / "checkpoints" / str(saved) / "data_iter").glob("process_*"))
    self.assertEqual(iterator_files, [f"process_{i}-of-{NUM_PROCESSES}.json"
                                      for i in range(NUM_PROCESSES)])
    self.assertEqual(self.metrics_after_run1[-1]["step"], saved)

  def test_resumed_run_finishes(self):
    self.assertEqual(self.run2_exit_codes, [0] * NUM_PROCESSES, _logs(self.tmp, "run2"))
    self.assertEqual(_committed_steps(self.workdir)[-1], STEPS)

  def test_losses_equal_a_single_process_run_on_the_same_global_batches(self):
    got = metrics_lib.read_metrics(self.workdir)
    want = metrics_lib.read_metrics(self.reference_workdir)
    self.assertEqual([m["step"] for m in want], list(range(1, STEPS + 1)))
    # Only process 0 writes metrics: one line per step, not one per host.
    self.assertEqual([m["step"] for m in got], [m["step"] for m in want],
                     _logs(self.tmp, "run1") + _logs(self.tmp, "run2"))
    np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in want], rtol=1e-5)
    self.assertLess(got[-1]["loss"], got[0]["loss"])

  def test_progress_and_messages_only_on_process_0(self):
    for run in ("run1", "run2"):
      logs = [(self.tmp / f"{run}.process{i}.log").read_text() for i in range(NUM_PROCESSES)]
      self.assertIn(f"/{STEPS} [", logs[0])    # the tqdm bar
      self.assertIn("Training done", logs[0])
      for log in logs[1:]:
        self.assertNotIn(f"/{STEPS} [", log)
        self.assertNotIn("Training done", log)


class InitializeDistributedTest(absltest.TestCase):
  """`jax.distributed.initialize()` runs when the environment says the job may span processes."""

  def _initialize(self, env: dict[str, str], tpu_chips: int = 0):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "TPU_", "JAX_", "OMPI_"))}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True), \
         mock.patch.object(sharding, "_tpu_chips_attached", return_value=tpu_chips), \
         mock.patch.object(jax.distributed, "is_initialized", return_value=False), \
         mock.patch.object(jax.distributed, "initialize") as initialize:
      return sharding.initialize_distributed(timeout_s=9), initialize

  def test_single_process_machine_does_not_initialize(self):
    done, initialize = self._initialize({"SLURM_NTASKS": "1"})
    self.assertFalse(done)
    initialize.assert_not_called()

  def test_slurm_with_several_tasks_lets_jax_read_slurm(self):
    done, initialize = self._initialize({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"})
    self.assertTrue(done)
    initialize.assert_called_once_with(initialization_timeout=9)

  def test_cloud_tpu_vm_lets_jax_read_the_tpu_metadata(self):
    done, initialize = self._initialize({}, tpu_chips=4)
    self.assertTrue(done)
    initialize.assert_called_once_with(initialization_timeout=9)

  def test_tpu_machine_without_pod_metadata_runs_as_one_process(self):
    with mock.patch.object(jax.distributed, "initialize",
                           side_effect=ValueError("coordinator_address should be defined.")):
      clean = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "TPU_", "JAX_", "OMPI_"))}
      with mock.patch.dict(os.environ, clean, clear=True), \
           mock.patch.object(sharding, "_tpu_chips_attached", return_value=1), \
           mock.patch.object(jax.distributed, "is_initialized", return_value=False):
        self.assertFalse(sharding.initialize_distributed())
      # Explicit settings that do not work are an error, never a silent single-process run.
      env = {**clean, "JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "2",
             "JAX_PROCESS_ID": "0"}
      with mock.patch.dict(os.environ, env, clear=True), \
           mock.patch.object(jax.distributed, "is_initialized", return_value=False), \
           self.assertRaises(ValueError):
        sharding.initialize_distributed()

  def test_explicit_coordinator(self):
    done, initialize = self._initialize({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234",
                                         "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    self.assertTrue(done)
    initialize.assert_called_once_with(initialization_timeout=9,
                                       coordinator_address="10.0.0.2:1234", num_processes=2,
                                       process_id=1)

  def test_only_once(self):
    with mock.patch.object(jax.distributed, "is_initialized", return_value=True), \
         mock.patch.object(jax.distributed, "initialize") as initialize:
      self.assertTrue(sharding.initialize_distributed())
    initialize.assert_not_called()


def _committed_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


if __name__ == "__main__":
  absltest.main()
