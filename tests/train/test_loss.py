"""Tests for llava_jax/train/loss.py: chunked cross-entropy equals the dense one, with less memory."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax import model as model_lib
from llava_jax.config import schema
from llava_jax.train import loss


def _inputs(batch=2, seq_len=24, dim=16, vocab=96, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(k1, (batch, seq_len, dim), jnp.float32)
  kernel = jax.random.normal(k2, (dim, vocab), jnp.float32) / np.sqrt(dim)
  labels = jax.random.randint(k3, (batch, seq_len), 0, vocab)
  labels = labels.at[:, :5].set(loss.IGNORE_INDEX)   # an unsupervised prompt
  labels = labels.at[1, -7:].set(loss.IGNORE_INDEX)  # and padding in one row
  return hidden, kernel, labels


class ChunkedCrossEntropyTest(parameterized.TestCase):

  def test_targets_shift_left_and_end_unsupervised(self):
    labels = jnp.array([[7, 8, 9]])
    np.testing.assert_array_equal(loss.next_token_targets(labels), [[8, 9, -100]])

  @parameterized.parameters(4, 5, 24, 100)  # divides T, pads T, one chunk, longer than T
  def test_matches_dense_value_and_gradients(self, chunk_len):
    hidden, kernel, labels = _inputs()

    def dense(h, w):
      return loss.dense_cross_entropy(h @ w, labels)

    def chunked(h, w):
      return loss.chunked_cross_entropy(h, w, labels, chunk_len=chunk_len)

    (sum_d, n_d), (sum_c, n_c) = dense(hidden, kernel), jax.jit(chunked)(hidden, kernel)
    self.assertEqual(int(n_c), int(n_d))
    self.assertEqual(int(n_c), 19 + 12)   # labels 5..23 in row 0, 5..16 in row 1
    np.testing.assert_allclose(sum_c, sum_d, rtol=1e-5)
    grads_d = jax.grad(lambda h, w: dense(h, w)[0], argnums=(0, 1))(hidden, kernel)
    grads_c = jax.jit(jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1)))(hidden, kernel)
    chex.assert_trees_all_close(grads_c, grads_d, rtol=1e-4, atol=1e-5)

  def test_loss_is_mean_log_likelihood(self):
    # Uniform logits give log(V) per supervised token.
    hidden = jnp.zeros((1, 6, 4))
    kernel = jnp.zeros((4, 10))
    labels = jnp.array([[1, 2, 3, -100, -100, -100]])
    total, count = loss.chunked_cross_entropy(hidden, kernel, labels, chunk_len=4)
    self.assertEqual(int(count), 2)
    np.testing.assert_allclose(total / count, np.log(10), rtol=1e-6)

  def test_bfloat16_hidden_states(self):
    hidden, kernel, labels = _inputs()
    total32, _ = loss.chunked_cross_entropy(hidden, kernel, labels, chunk_len=8)
    total16, _ = loss.chunked_cross_entropy(hidden.astype(jnp.bfloat16), kernel, labels,
                                            chunk_len=8)
    self.assertEqual(total16.dtype, jnp.float32)
    np.testing.assert_allclose(total16, total32, rtol=2e-2)

  def test_backward_never_holds_full_logits(self):
    batch, seq_len, dim, vocab = 2, 512, 32, 4096
    hidden, kernel, labels = _inputs(batch, seq_len, dim, vocab)
    full_logits_bytes = batch * seq_len * vocab * 4

    def temp_bytes(fn):
      grad = jax.jit(jax.grad(lambda h, w: fn(h, w)[0], argnums=(0, 1)))
      return grad.lower(hidden, kernel).compile().memory_analysis().temp_size_in_bytes

    chunked = temp_bytes(lambda h, w: loss.chunked_cross_entropy(h, w, labels, chunk_len=32))
    dense = temp_bytes(lambda h, w: loss.dense_cross_entropy(h @ w, labels))
    self.assertGreaterEqual(dense, full_logits_bytes)
    self.assertLess(chunked, full_logits_bytes / 3)


class ModelLossTest(absltest.TestCase):
  """`model_loss` on the tiny LLaVA: chunked and dense agree, text-only batches skip the tower."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cfg = schema.model_config("tiny")
    cls.model = model_lib.build(cfg)
    n = schema.num_image_tokens(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.llm.vocab_size, (2, 96)).astype(np.int32)
    ids[:, 1:1 + n] = cfg.image_token_id
    labels = np.where(ids == cfg.image_token_id, -100, ids).astype(np.int32)
    cls.batch = dict(input_ids=jnp.asarray(ids), labels=jnp.asarray(labels),
                     segment_ids=jnp.ones((2, 96), jnp.int32),
                     positions=jnp.broadcast_to(jnp.arange(96, dtype=jnp.int32), (2, 96)),
                     pixels=jnp.asarray(rng.standard_normal((2, 1, 64, 64, 3)), jnp.float32))
    init = jax.jit(lambda r, ids, pix: nn.unbox(cls.model.init(r, ids, pix)["params"]))
    cls.params = init(jax.random.key(0), cls.batch["input_ids"][:1], cls.batch["pixels"][:1])

  def _loss_and_grads(self, batch, chunk_len):
    def mean_loss(params):
      total, count = loss.model_loss(self.model, params, batch, jax.random.key(1),
                                     chunk_len=chunk_len)
      return total / count
    return jax.jit(jax.value_and_grad(mean_loss))(self.params)

  def test_chunked_matches_dense(self):
    dense_loss, dense_grads = self._loss_and_grads(self.batch, 0)
    chunked_loss, chunked_grads = self._loss_and_grads(self.batch, 32)
    np.testing.assert_allclose(chunked_loss, dense_loss, rtol=1e-5)
    self.assertGreater(float(dense_loss), 6.0)  # about log(2048) at init
    chex.assert_trees_all_close(chunked_grads, dense_grads, rtol=1e-3, atol=1e-6)

  def test_text_only_batch_runs_no_vision(self):
    # Zero images per row: the tower is skipped (it could not even reshape an empty batch).
    text = dict(self.batch, pixels=jnp.zeros((2, 0, 64, 64, 3)),
                input_ids=jnp.where(self.batch["input_ids"] == 4, 7, self.batch["input_ids"]))
    total, count = jax.jit(lambda p: loss.model_loss(self.model, p, text, jax.random.key(1),
                                                     chunk_len=32))(self.params)
    logits = jax.jit(lambda p: self.model.apply({"params": p}, text["input_ids"], None))(
        self.params)
    expected_total, expected_count = loss.dense_cross_entropy(logits, text["labels"])
    self.assertEqual(int(count), int(expected_count))
    np.testing.assert_allclose(total, expected_total, rtol=1e-5)

if __name__ == "__main__":
  absltest.main()
