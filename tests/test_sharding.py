"""Mesh, logical→mesh rules, batch placement, and 8-device training equal to 1-device training."""

import functools
import os
from unittest import mock

from absl.testing import absltest
import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import numpy as np

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.train import optimizer
from llava_jax.train import state as state_lib
from llava_jax.train import step as step_lib
import train_fixtures


class MeshTest(absltest.TestCase):

  def test_minus_one_fills_the_remaining_devices(self):
    self.assertEqual(sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8), (2, 2, 2))
    self.assertEqual(sharding.mesh_shape(dict(data=1, fsdp=-1, tensor=1), 8), (1, 8, 1))
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    self.assertEqual(dict(mesh.shape), dict(data=2, fsdp=2, tensor=2))
    self.assertEqual(mesh.devices.size, jax.device_count())

  def test_bad_sizes_name_the_config_field(self):
    for sizes in (dict(data=-1, fsdp=-1, tensor=1), dict(data=3, fsdp=1, tensor=1),
                  dict(data=0, fsdp=-1, tensor=1), dict(data=-1, fsdp=3, tensor=1)):
      with self.assertRaisesRegex(ValueError, "config.mesh"):
        sharding.mesh_shape(sizes, 8)

  def test_rules_table(self):
    self.assertEqual(sharding.mesh_axes(("vocab", "embed")), P("tensor", "fsdp"))
    self.assertEqual(sharding.mesh_axes(("layers", "embed", "heads", "head_dim")),
                     P(None, "fsdp", "tensor", None))
    self.assertEqual(sharding.mesh_axes(("batch", "length")), P(("data", "fsdp"), None))
    # A repeated name is allowed (patch kernel); a mesh axis is never used twice.
    self.assertEqual(sharding.mesh_axes(("vision_patch",) * 3 + ("vision_embed",)),
                     P(None, None, None, "fsdp"))
    self.assertEqual(sharding.mesh_axes(("embed", "embed")), P("fsdp", None))
    with self.assertRaisesRegex(ValueError, "no rule"):
      sharding.mesh_axes(("embd",))

  def test_global_batch_is_split_over_data_and_fsdp(self):
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    local = {"input_ids": np.arange(8 * 6, dtype=np.int32).reshape(8, 6)}
    batch = sharding.global_batch(local, mesh)["input_ids"]
    self.assertEqual(batch.sharding.spec, P(("data", "fsdp")))
    self.assertEqual(batch.addressable_shards[0].data.shape, (2, 6))
    np.testing.assert_array_equal(np.asarray(batch), local["input_ids"])

  def test_distributed_init_only_with_several_processes(self):
    with mock.patch.dict(os.environ, {"JAX_NUM_PROCESSES": "1"}), \
         mock.patch.object(jax.distributed, "initialize") as initialize:
      self.assertFalse(sharding.initialize_distributed())
      initialize.assert_not_called()
    env = {"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
           "JAX_PROCESS_ID": "1"}
    with mock.patch.dict(os.environ, env), \
         mock.patch.object(jax.distributed, "initialize") as initialize:
      self.assertTrue(sharding.initialize_distributed(timeout_s=7))
      initialize.assert_called_once_with(initialization_timeout=7,
                                         coordinator_address="10.0.0.1:1234",
                                         num_processes=2, process_id=1)


class ShardedTrainingTest(absltest.TestCase):
  """The same five steps on one device and on a (2, 2, 2) mesh of 8 fake CPU devices.

  One test method: under pytest-xdist every worker that runs a method of a class runs its
  (expensive) setUpClass.
  """

  def _train(self, config, batches, mesh_sizes, num_devices):
    mesh = sharding.make_mesh(mesh_sizes, jax.devices()[:num_devices])
    model = model_lib.build(config.model)
    tx, schedule = optimizer.make_optimizer(config.optim, 5)
    factory = state_lib.StateFactory(model, config.model, tx, config.optim.trainable, mesh)
    state = factory.state_from_params(factory.random_params(jax.random.key(0)))
    train_step = jax.jit(
        sharding.with_activation_rules(functools.partial(
            step_lib.train_step, model=model, tx=tx, schedule=schedule,
            trainable=factory.trainable), mesh),
        in_shardings=(factory.shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(factory.shardings, sharding.replicated(mesh)), donate_argnums=0)
    # The model's activation constraints are active (batch rows over data x fsdp).
    lowered = train_step.lower(state, sharding.global_batch(batches[0], mesh), jax.random.key(1))
    self.assertIn('sdy.sharding_constraint', lowered.as_text())
    self.assertIn('[{"data", "fsdp"}, {}, {}]', lowered.as_text())
    losses = []
    for batch in batches:
      state, metrics = train_step(state, sharding.global_batch(batch, mesh), jax.random.key(1))
      losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), factory

  def test_eight_devices_match_one_device_and_shard_every_large_parameter(self):
    train_fixtures.use_compilation_cache()
    config = train_fixtures.tiny_config()
    batches = [train_fixtures.batch_of(config, seed=s) for s in range(5)]
    losses_1, params_1, _ = self._train(config, batches, dict(data=1, fsdp=1, tensor=1), 1)
    losses_8, params_8, factory_8 = self._train(config, batches, dict(data=2, fsdp=2, tensor=2), 8)

    self.assertGreater(losses_1[0] - losses_1[-1], 0.01)   # it does train
    np.testing.assert_allclose(losses_8, losses_1, atol=1e-5, rtol=0)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=0),
                 params_8, params_1)

    for path, leaf in jax.tree_util.tree_leaves_with_path(factory_8.abstract.params):
      if leaf.size >= 2048:
        self.assertFalse(leaf.sharding.is_fully_replicated, jax.tree_util.keystr(path))
    # The optimizer state follows its parameter's sharding.
    mu = factory_8.shardings.opt_state[1][0].mu
    self.assertEqual(mu["llm"]["embed"]["embedding"].spec,
                     factory_8.shardings.params["llm"]["embed"]["embedding"].spec)


class ModelAxesTest(absltest.TestCase):

  def test_every_model_parameter_has_logical_names_with_rules(self):
    config = train_fixtures.tiny_config()
    boxed = model_lib.logical_param_shapes(model_lib.build(config.model))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
      self.assertIsInstance(leaf, nn.LogicallyPartitioned)
      sharding.mesh_axes(leaf.names)   # raises on a name without a rule


if __name__ == "__main__":
  absltest.main()
