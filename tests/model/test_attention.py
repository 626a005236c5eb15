"""Attention and rotary tables against their textbook formulas: outputs, gradients, masks, bf16."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.model import layers


def naive_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS):
  """Textbook GQA attention: repeat K/V heads, softmax over masked scores, autodiff gradients."""
  group = q_BxTxHxDh.shape[2] // k_BxSxKxDh.shape[2]
  k = jnp.repeat(k_BxSxKxDh, group, axis=2).astype(jnp.float32)
  v = jnp.repeat(v_BxSxKxDh, group, axis=2).astype(jnp.float32)
  scores = jnp.einsum("bthd,bshd->bhts", q_BxTxHxDh.astype(jnp.float32), k)
  scores /= np.sqrt(q_BxTxHxDh.shape[-1])
  if mask_BxTxS is not None:
    scores = jnp.where(mask_BxTxS[:, None], scores, -1e30)
  return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)


def causal_mask_with_padding(batch, length, valid_lengths):
  segments = (np.arange(length)[None, :] < np.asarray(valid_lengths)[:, None]).astype(np.int32)
  slots = np.broadcast_to(np.arange(length), (batch, length))
  return layers.attention_mask(jnp.asarray(segments), jnp.asarray(segments), jnp.asarray(slots),
                               jnp.asarray(slots)), segments


class AttentionTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("mha_causal_padded", 4, 4, "causal"),
      ("gqa_causal_padded", 4, 2, "causal"),
      ("mqa_causal_padded", 4, 1, "causal"),
      ("gqa_unmasked", 4, 2, None),
  )
  def test_output_and_gradients_match_autodiff_softmax(self, heads, kv_heads, mask_kind):
    b, t, dh = 3, 11, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, t, heads, dh))
    k = jax.random.normal(keys[1], (b, t, kv_heads, dh))
    v = jax.random.normal(keys[2], (b, t, kv_heads, dh))
    upstream = jax.random.normal(keys[3], (b, t, heads, dh))
    mask, valid = (causal_mask_with_padding(b, t, [11, 7, 1]) if mask_kind else (None, None))
    # Padding queries (no allowed key) give outputs nobody uses: compare real rows only.
    rows = jnp.ones((b, t, 1, 1)) if valid is None else jnp.asarray(valid)[:, :, None, None]

    def loss(fn, q, k, v):
      return jnp.sum(fn(q, k, v, mask) * upstream * rows)

    ours = jax.jit(jax.value_and_grad(lambda *a: loss(layers.dot_product_attention, *a),
                                      argnums=(0, 1, 2)))(q, k, v)
    want = jax.value_and_grad(lambda *a: loss(naive_attention, *a), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(ours[0], want[0], rtol=1e-5, atol=1e-5)
    for name, got, expected in zip("qkv", ours[1], want[1]):
      np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")

  def test_fully_masked_rows_attend_uniformly_and_pass_no_gradient(self):
    b, t, h, dh = 1, 4, 2, 4
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, h, dh)) for i in range(3))
    mask = jnp.zeros((b, t, t), bool).at[:, :2, :2].set(True)  # Queries 2, 3 see nothing.
    out = layers.dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out[0, 2:], jnp.broadcast_to(v[0].mean(0), (2, h, dh)), atol=1e-6)
    grads = jax.grad(lambda q, k: jnp.sum(layers.dot_product_attention(q, k, v, mask)[:, 2:]),
                     argnums=(0, 1))(q, k)
    np.testing.assert_array_equal(grads[0], 0.0)
    np.testing.assert_array_equal(grads[1], 0.0)

  def test_bfloat16_inputs_stay_close_and_keep_their_dtype(self):
    b, t, h, kv, dh = 2, 16, 4, 2, 16
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (b, t, h, dh))
    k = jax.random.normal(keys[1], (b, t, kv, dh))
    v = jax.random.normal(keys[2], (b, t, kv, dh))
    mask, _ = causal_mask_with_padding(b, t, [16, 16])
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    grad_fn = jax.grad(lambda *a: jnp.sum(layers.dot_product_attention(*a, mask) ** 2),
                       argnums=(0, 1, 2))
    out = layers.dot_product_attention(*bf16, mask)
    self.assertEqual(out.dtype, jnp.bfloat16)
    np.testing.assert_allclose(out.astype(jnp.float32), naive_attention(q, k, v, mask), atol=3e-2)
    for got, expected in zip(grad_fn(*bf16), grad_fn(q, k, v)):
      self.assertEqual(got.dtype, jnp.bfloat16)
      scale = float(jnp.max(jnp.abs(expected)))
      np.testing.assert_allclose(got.astype(jnp.float32), expected, atol=0.05 * scale)


class RopeTest(absltest.TestCase):

  def test_tables_match_the_direct_formula_and_refuse_positions_past_max_len(self):
    head_dim, theta, scaling, max_len = 8, 500.0, 2.0, 64
    positions = jnp.array([[0, 1, 5, 63], [7, 62, 64, 100]], jnp.int32)
    cos, sin = layers.rope_tables(positions, head_dim, theta, scaling, max_len)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    angles = np.asarray(positions, np.float64)[..., None] / scaling * inv_freq
    angles = np.concatenate([angles, angles], axis=-1)
    inside = np.asarray(positions) < max_len
    np.testing.assert_allclose(np.asarray(cos)[inside], np.cos(angles)[inside], atol=1e-5)
    np.testing.assert_allclose(np.asarray(sin)[inside], np.sin(angles)[inside], atol=1e-5)
    self.assertTrue(np.isnan(np.asarray(cos)[~inside]).all())  # loud, not a clamped angle
    self.assertTrue(np.isnan(np.asarray(sin)[~inside]).all())


if __name__ == "__main__":
  absltest.main()
