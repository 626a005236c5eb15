"""bench_checksums: the save size it extrapolates to, and its timing of the real sealing code."""

import pathlib
import shutil
import tempfile

from absl.testing import absltest
import jax

from configs import finetune
from llava_jax import sharding
from llava_jax.bench import checksums as bench_checksums
from llava_jax.checkpoint import workdirs
from llava_jax.train import state as state_lib


class BenchChecksumsTest(absltest.TestCase):

  def test_save_bytes_are_params_plus_two_adam_moments_of_the_trainable_ones(self):
    config = finetune.get_config("demo")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    factory, _ = state_lib.make_factory(config, mesh, num_steps=1)
    sizes = bench_checksums.save_bytes("demo")
    self.assertEqual(sizes["params"], factory.num_params() * 4)   # float32 master weights
    moments = 2 * factory.num_trainable() * 4                      # mu, nu in float32
    self.assertBetween(sizes["opt_state"], moments, moments + 64)  # + step counters

  def test_times_seal_and_verify_of_a_real_save(self):
    workdir = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, workdir)
    hashed, seals, verifies = bench_checksums.time_seal_and_verify(workdir, 1 << 20, repeats=2)
    self.assertGreater(hashed, 32 << 20)   # one 64 MiB array, a little smaller after zstd
    self.assertLen(seals, 2)
    self.assertLen(verifies, 2)
    step = workdirs.checkpoints_dir(workdir) / "1"
    self.assertTrue(workdirs.verify_step(step))


if __name__ == "__main__":
  absltest.main()
