"""train_step: loss normalization, gradient accumulation, freezing, non-finite updates, schedule."""

import functools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llava_jax import model as model_lib
from llava_jax import sharding
from llava_jax.train import loss as loss_lib
from llava_jax.train import optimizer
from llava_jax.train import state as state_lib
from llava_jax.train import step as step_lib
import train_fixtures


def _bitwise_equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


class _StepHarness:
  """A tiny model, its optimizer and state, and a jitted step for a given accumulation."""

  def __init__(self, stage: str, steps: int = 10):
    train_fixtures.use_compilation_cache()
    self.config = train_fixtures.tiny_config(stage)
    self.model = model_lib.build(self.config.model)
    self.tx, self.schedule = optimizer.make_optimizer(self.config.optim, steps)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    self.factory = state_lib.StateFactory(self.model, self.config.model, self.tx,
                                          self.config.optim.trainable, mesh)
    self.params = jax.device_get(self.factory.random_params(jax.random.key(0)))
    self.batch = train_fixtures.batch_of(self.config)
    self._steps = {}

  def fresh_state(self):
    return self.factory.state_from_params(self.params)

  def step(self, state, batch, grad_accum_steps=1):
    if grad_accum_steps not in self._steps:
      self._steps[grad_accum_steps] = jax.jit(functools.partial(
          step_lib.train_step, model=self.model, tx=self.tx, schedule=self.schedule,
          trainable=self.factory.trainable, grad_accum_steps=grad_accum_steps))
    return self._steps[grad_accum_steps](state, batch, jax.random.key(1))


class FinetuneStepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.h = _StepHarness("finetune")

  def test_loss_is_mean_over_supervised_tokens_of_the_batch(self):
    h = self.h
    logits = h.model.apply({"params": h.params}, h.batch["input_ids"], h.batch["pixels"],
                           segment_ids=h.batch["segment_ids"], positions=h.batch["positions"])
    logits, labels = np.asarray(logits, np.float64), h.batch["labels"]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_losses = [-log_probs[b, t, labels[b, t + 1]]
                    for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1)
                    if labels[b, t + 1] != loss_lib.IGNORE_INDEX]
    _, metrics = h.step(h.fresh_state(), h.batch)
    self.assertEqual(int(metrics["supervised_tokens"]), len(token_losses))
    self.assertAlmostEqual(float(metrics["loss"]), np.mean(token_losses), places=5)
    self.assertEqual(int(metrics["tokens"]), int(h.batch["segment_ids"].sum()))

  def test_gradient_accumulation_matches_one_big_batch(self):
    h = self.h
    results = {a: h.step(h.fresh_state(), h.batch, a) for a in (1, 2)}
    state_1, metrics_1 = results[1]
    for a in (2,):
      state_a, metrics_a = results[a]
      self.assertAlmostEqual(float(metrics_a["loss"]), float(metrics_1["loss"]), places=5)
      self.assertAlmostEqual(float(metrics_a["grad_norm"]), float(metrics_1["grad_norm"]),
                             places=5)
      jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=0),
                   state_a.params, state_1.params)

  def test_micro_batches_interleave_rows(self):
    batch = {"x": jnp.arange(8)}
    np.testing.assert_array_equal(step_lib.split_micro_batches(batch, 2)["x"],
                                  [[0, 2, 4, 6], [1, 3, 5, 7]])
    with self.assertRaisesRegex(ValueError, "micro-batches"):
      step_lib.split_micro_batches(batch, 3)

  def test_vision_tower_frozen_llm_and_projector_train(self):
    h = self.h
    state, _ = h.step(h.fresh_state(), h.batch)
    state, _ = h.step(state, h.batch)
    params = jax.device_get(state.params)
    self.assertTrue(_bitwise_equal(params["vision"], h.params["vision"]))
    self.assertFalse(_bitwise_equal(params["llm"], h.params["llm"]))
    self.assertFalse(_bitwise_equal(params["projector"], h.params["projector"]))
    self.assertEqual(set(state.opt_state[1][0].mu), {"projector", "llm"})

  def test_non_finite_update_leaves_params_and_optimizer_state_unchanged(self):
    h = self.h
    state, _ = h.step(h.fresh_state(), h.batch)
    before = jax.device_get((state.params, state.opt_state))
    bad = dict(h.batch, pixels=np.full_like(h.batch["pixels"], np.nan))
    new_state, metrics = h.step(state, bad)
    self.assertFalse(bool(metrics["finite"]))
    self.assertFalse(np.isfinite(float(metrics["loss"])))
    self.assertTrue(_bitwise_equal(jax.device_get((new_state.params, new_state.opt_state)),
                                   before))
    self.assertEqual(int(new_state.step), 2)
    _, metrics = h.step(new_state, h.batch)
    self.assertTrue(bool(metrics["finite"]))


class PretrainStepTest(absltest.TestCase):

  def test_only_the_projector_trains_or_has_optimizer_state(self):
    h = _StepHarness("pretrain")
    state = h.fresh_state()
    self.assertEqual(set(state.opt_state[1][0].mu), {"projector"})
    for _ in range(3):
      state, metrics = h.step(state, h.batch)
    params = jax.device_get(state.params)
    self.assertTrue(_bitwise_equal(params["vision"], h.params["vision"]))
    self.assertTrue(_bitwise_equal(params["llm"], h.params["llm"]))
    self.assertFalse(_bitwise_equal(params["projector"], h.params["projector"]))
    self.assertGreater(float(metrics["grad_norm"]), 0)
    trainable, frozen = optimizer.split_trainable(h.params, h.factory.trainable)
    self.assertEqual(set(trainable), {"projector"})
    self.assertEqual(set(frozen), {"vision", "llm"})


class OptimizerTest(absltest.TestCase):

  def test_warmup_then_cosine_to_zero(self):
    config = train_fixtures.tiny_config()
    total = 200
    schedule = optimizer.make_schedule(config.optim, total)
    warmup = optimizer.warmup_steps(config.optim, total)
    self.assertEqual(warmup, 6)   # ceil(0.03 * 200), as Hugging Face's Trainer
    self.assertEqual(float(schedule(0)), 0.0)
    self.assertAlmostEqual(float(schedule(warmup)), config.optim.lr, places=9)
    self.assertAlmostEqual(float(schedule(total)), 0.0, places=9)
    lrs = [float(schedule(s)) for s in range(warmup, total)]
    self.assertTrue(all(a >= b for a, b in zip(lrs, lrs[1:])))
    self.assertAlmostEqual(float(schedule(warmup + (total - warmup) // 2)), config.optim.lr / 2,
                           places=6)

  def test_trainable_patterns_are_checked(self):
    params = {"projector": {"w": 1}, "llm": {"embed": {"embedding": 2}}}
    optimizer.check_trainable(params, ("projector/.*",))
    with self.assertRaisesRegex(ValueError, "matches no parameter"):
      optimizer.check_trainable(params, ("projecter/.*",))
    with self.assertRaisesRegex(ValueError, "empty"):
      optimizer.check_trainable(params, ())
    trainable, frozen = optimizer.split_trainable(params, ("llm/.*",))
    self.assertEqual(trainable, {"llm": {"embed": {"embedding": 2}}})
    self.assertEqual(optimizer.merge(trainable, frozen), params)

  def test_adamw_with_clipping(self):
    config = train_fixtures.tiny_config()
    tx, _ = optimizer.make_optimizer(config.optim, 10)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    # A huge gradient is clipped to norm 1 before Adam (which is scale-free anyway).
    _, state = tx.update({"w": jnp.full(3, 1e6)}, state, params)
    mu = state[1][0].mu["w"]
    np.testing.assert_allclose(np.linalg.norm(mu), 0.1, rtol=1e-5)   # (1 - b1) * |clipped|
    self.assertEqual(optax.tree.norm(mu).dtype, jnp.float32)

  def test_first_moment_dtype_from_config(self):
    config = train_fixtures.tiny_config()
    config.optim.mu_dtype = "bfloat16"
    tx, _ = optimizer.make_optimizer(config.optim, 10)
    params = {"w": jnp.ones(3)}
    _, state = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params), params)
    self.assertEqual(state[1][0].mu["w"].dtype, jnp.bfloat16)   # half the bytes
    self.assertEqual(state[1][0].nu["w"].dtype, jnp.float32)


if __name__ == "__main__":
  absltest.main()
