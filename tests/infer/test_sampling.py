"""Tests for llava_jax.infer.sampling: greedy, temperature, top-k, top-p, per-row seeds."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.infer import sampling


def _sample(logits, step=0, **kw):
  rows = logits.shape[0]
  params = [sampling.SamplingParams(**kw)] * rows
  return np.asarray(jax.jit(sampling.sample)(jnp.asarray(logits), jnp.int32(step),
                                             **sampling.stack_params(params)))


class SamplingTest(parameterized.TestCase):

  def test_greedy_is_argmax(self):
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32)
    np.testing.assert_array_equal(_sample(logits), logits.argmax(-1))

  def test_top_k_one_is_greedy_at_any_temperature(self):
    logits = np.random.default_rng(1).normal(size=(4, 50)).astype(np.float32)
    for step in range(5):
      np.testing.assert_array_equal(_sample(logits, step, temperature=5.0, top_k=1),
                                    logits.argmax(-1))

  def test_top_k_only_draws_from_the_k_best(self):
    logits = np.random.default_rng(2).normal(size=(1, 50)).astype(np.float32)
    best3 = set(np.argsort(-logits[0])[:3])
    drawn = {int(_sample(logits, s, temperature=10.0, top_k=3, seed=s)[0]) for s in range(60)}
    self.assertLessEqual(drawn, best3)
    self.assertGreater(len(drawn), 1)  # it does sample, not just take the argmax

  def test_top_p_keeps_the_nucleus(self):
    # probs 0.5, 0.3, 0.15, 0.05: p=0.7 keeps the first two (mass before the 2nd is 0.5 < 0.7).
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    drawn = {int(_sample(logits, s, temperature=1.0, top_p=0.7, seed=s)[0]) for s in range(80)}
    self.assertEqual(drawn, {0, 1})

  def test_temperature_follows_the_distribution(self):
    probs = np.array([0.6, 0.3, 0.1], np.float32)
    logits = np.tile(np.log(probs)[None], (2000, 1))
    params = [sampling.SamplingParams(temperature=1.0, seed=i) for i in range(2000)]
    drawn = np.asarray(jax.jit(sampling.sample)(jnp.asarray(logits), jnp.int32(3),
                                                **sampling.stack_params(params)))
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(freq, probs, atol=0.04)

  def test_seeded_sampling_is_reproducible_and_per_row(self):
    logits = np.random.default_rng(3).normal(size=(1, 100)).astype(np.float32)
    a = [int(_sample(logits, s, temperature=1.0, seed=7)[0]) for s in range(20)]
    b = [int(_sample(logits, s, temperature=1.0, seed=7)[0]) for s in range(20)]
    c = [int(_sample(logits, s, temperature=1.0, seed=8)[0]) for s in range(20)]
    self.assertEqual(a, b)
    self.assertNotEqual(a, c)
    # A row's draw does not depend on its batch neighbours.
    mixed = [sampling.SamplingParams(temperature=1.0, seed=7), sampling.SamplingParams()]
    both = np.asarray(sampling.sample(jnp.asarray(np.tile(logits, (2, 1))), jnp.int32(4),
                                      **sampling.stack_params(mixed)))
    self.assertEqual(int(both[0]), a[4])
    self.assertEqual(int(both[1]), int(logits.argmax()))

  @parameterized.parameters(dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0),
                            dict(top_p=1.5))
  def test_rejects_bad_params(self, **kw):
    with self.assertRaises(ValueError):
      sampling.SamplingParams(**kw)


if __name__ == "__main__":
  absltest.main()
