"""Generation: parity with transformers' generate, cached decode vs full forward, sampling,
stopping, left padding, sharding, streaming, and the compile-once loop."""

import pathlib
import re
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import torch

import llava_hf_fixtures as fx
import llava_jax
from llava_jax import sharding
from llava_jax.infer import generate
from llava_jax.infer import prompting
from llava_jax.model import llama

N = (fx.IMAGE_SIZE // fx.PATCH_SIZE) ** 2   # image tokens per image
EOS = 2


def _prompt(rng, words: int, image: bool) -> list[int]:
  """BOS, optionally an expanded image, then `words` random text ids (no special ids)."""
  text = rng.integers(10, 1000, size=words).tolist()
  return [1] + ([fx.IMAGE_TOKEN_ID] * N if image else []) + text


def _hlo_computations(hlo: str) -> dict[str, list[str]]:
  """Optimized HLO text -> {computation name: its instruction lines}."""
  comps, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
    if head:
      current = comps.setdefault(head.group(1), [])
    elif current is not None:
      current.append(line)
  return comps


class GenerateTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp())
    cls.hf_model, cls.model = fx.imported_llava(cls.tmp, seed=1)
    rng = np.random.default_rng(0)
    cls.prompts = [_prompt(rng, 5, True), _prompt(rng, 17, True), _prompt(rng, 9, False)]
    cls.pixels = rng.normal(size=(3, 1, fx.IMAGE_SIZE, fx.IMAGE_SIZE, 3)).astype(np.float32)
    cls.greedy = cls.model.generator.generate(cls.prompts, cls.pixels, max_new_tokens=40,
                                              keep_eos=True)

  def test_greedy_matches_transformers_generate(self):
    for b, prompt in enumerate(self.prompts):
      kwargs = {}
      if fx.IMAGE_TOKEN_ID in prompt:
        kwargs["pixel_values"] = torch.from_numpy(self.pixels[b]).permute(0, 3, 1, 2)
      with torch.no_grad():
        out = self.hf_model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=40,
                                     do_sample=False, eos_token_id=EOS, pad_token_id=3, **kwargs)
      want = out[0, len(prompt):].tolist()
      self.assertGreaterEqual(len(want), 32)  # a real test: no early EOS
      np.testing.assert_array_equal(self.greedy[b, :len(want)], want, err_msg=f"prompt {b}")

  def test_cached_decode_logits_match_full_forward(self):
    """Left-padded prefill + one-token decode steps == a full forward over each sequence."""
    module, params = self.model.module, self.model.params
    steps = 6
    seqs = [p + self.greedy[b, :steps].tolist() for b, p in enumerate(self.prompts)]
    lengths = np.array([len(p) for p in self.prompts], np.int32)
    width = int(lengths.max())
    ids = np.full((3, width), 3, np.int32)
    for b, p in enumerate(self.prompts):
      ids[b, width - len(p):] = p

    @jax.jit
    def prefill(ids, pixels, lengths):
      segments, positions = generate.left_padded_layout(lengths, width)
      cache = llama.init_cache(module.cfg.llm, 3, width + steps)
      return module.apply({"params": params}, ids, pixels, segment_ids=segments,
                          positions=positions, cache=cache)

    decode = jax.jit(lambda token, pos, cache: module.apply(
        {"params": params}, token, pos, cache, method="decode"))
    logits, cache = prefill(ids, self.pixels, lengths)
    cached = [logits[:, -1]]
    for s in range(steps):
      logits, cache = decode(jnp.asarray(self.greedy[:, s:s + 1]), (lengths + s)[:, None], cache)
      cached.append(logits[:, 0])
    cached = np.stack(cached, axis=1)  # [B, steps + 1, V]
    # Reference: every sequence right-padded in one uncached forward (causal, so padding after
    # a row cannot change it).
    full_ids = np.full((3, max(map(len, seqs))), 3, np.int32)
    for b, seq in enumerate(seqs):
      full_ids[b, :len(seq)] = seq
    full = np.asarray(jax.jit(module.apply)({"params": params}, full_ids, self.pixels))
    for b, seq in enumerate(seqs):
      want = full[b, len(self.prompts[b]) - 1:len(seq)]
      np.testing.assert_allclose(cached[b], want, atol=1e-4, rtol=0)

  def test_batch_rows_equal_single_prompts(self):
    alone = self.model.generator.generate([self.prompts[1]], self.pixels[1:2], max_new_tokens=40,
                                          keep_eos=True)
    np.testing.assert_array_equal(alone[0], self.greedy[1])

  def test_loop_compiles_once_per_bucket(self):
    gen = self.model.generator
    gen.generate(self.prompts, self.pixels, max_new_tokens=40)   # compiled (maybe already)
    compiles = []
    def count(event, duration, **kwargs):
      del duration, kwargs
      if event == "/jax/core/compile/backend_compile_duration":
        compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
      # Other lengths and budgets inside the same buckets reuse the compiled programs.
      gen.generate([self.prompts[0][:-2], self.prompts[1], self.prompts[2][:-1]], self.pixels,
                   max_new_tokens=[7, 40, 33])
    finally:
      jax.monitoring.unregister_event_duration_listener(count)
    self.assertEmpty(compiles)

  def test_decode_loop_reads_weights_and_cache_in_place(self):
    """The compiled decode loop neither slices the stacked [L, ...] weights (a copy of every
    weight per step) nor copies / transposes a KV-cache buffer: it only updates it in place."""
    gen = self.model.generator
    layers = gen.params["llm"]["layers"]   # llava_jax.load keeps them split per layer ...
    self.assertIsInstance(layers, tuple)
    # ... but a Generator may be given the training layout: stacked [L, ...] arrays.
    stacked_params = dict(gen.params, llm=dict(gen.params["llm"], layers=jax.tree.map(
        lambda *xs: jnp.stack(xs), *layers)))
    _, shapes, ids, pixels, lengths, max_new, kw = gen.prepare(self.prompts, self.pixels, None, 8)
    state = gen.start(stacked_params, ids, pixels, lengths, max_new, kw, max_new=shapes.max_new)
    hlo = gen.decode_until.lower(stacked_params, state, np.int32(8), np.zeros(shapes.batch, bool),
                              kw).compile().as_text()
    cache = state["cache"]["k"][0]
    self.assertEqual(cache.dtype, np.float32)
    cache_type = f"f32[{','.join(map(str, cache.shape))}]"
    comps = _hlo_computations(hlo)
    loops = [l for lines in comps.values() for l in lines if " while(" in l and cache_type in l]
    self.assertNotEmpty(loops, f"no while loop carrying {cache_type}")
    body_name = re.search(r"body=%([\w.-]+)", loops[0]).group(1)
    body = comps[body_name]
    stacked = [x for x in jax.tree.leaves(stacked_params["llm"]["layers"]) if x.ndim >= 3]
    self.assertNotEmpty(stacked)
    body_text = "\n".join(body)
    for x in stacked:
      x_type = f"[{','.join(map(str, x.shape))}]"
      self.assertFalse(x_type in body_text, f"the decode step reads stacked weights {x_type}")
    writes = 0
    for line in body:
      op = re.match(rf"\s*(?:ROOT )?%\S+ = {re.escape(cache_type)}\{{[\d,]*\}} ([\w-]+)\(", line)
      if not op or op.group(1) in ("bitcast", "get-tuple-element", "parameter", "tuple"):
        continue
      if op.group(1) == "fusion":
        called = comps[re.search(r"calls=%([\w.-]+)", line).group(1)]
        root = next(l for l in called if l.lstrip().startswith("ROOT"))
        self.assertIn("dynamic-update-slice(", root, line)
      else:
        self.assertEqual(op.group(1), "dynamic-update-slice", line)
      writes += 1
    self.assertEqual(writes, 2 * len(state["cache"]["k"]))  # k and v of every layer

  def test_seeded_sampling_is_reproducible(self):
    ids = np.array([self.prompts[0]])
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=0.9, top_k=50)
    a = self.model.generate(ids, self.pixels[:1], seed=5, **kw)
    b = self.model.generate(ids, self.pixels[:1], seed=5, **kw)
    c = self.model.generate(ids, self.pixels[:1], seed=6, **kw)
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, c))
    self.assertFalse(np.array_equal(a[0], self.greedy[0, :24]))

  def test_stops_at_eos_and_pads_after(self):
    stop_token = int(self.greedy[0, 5])
    first = int(np.argmax(self.greedy[0] == stop_token))
    gen = generate.Generator(self.model.module, self.model.params, eos_ids=[stop_token],
                             pad_id=3, max_len=self.model.context_len)
    out = gen.generate(self.prompts[:1], self.pixels[:1], max_new_tokens=40, keep_eos=True)
    np.testing.assert_array_equal(out[0, :first + 1], self.greedy[0, :first + 1])
    self.assertTrue(np.all(out[0, first + 1:] == 3))

  def test_max_new_tokens_per_row(self):
    out = self.model.generator.generate(self.prompts, self.pixels, max_new_tokens=[3, 40, 10])
    np.testing.assert_array_equal(out[0, :3], self.greedy[0, :3])
    self.assertTrue(np.all(out[0, 3:] == 3))
    np.testing.assert_array_equal(out[2, :10], self.greedy[2, :10])

  def test_stream_yields_the_same_tokens(self):
    rows = [[], [], []]
    for pieces, done, _ in self.model.generator.stream(self.prompts, self.pixels,  # noqa: B007
                                                       max_new_tokens=40, chunk_size=8):
      for b, piece in enumerate(pieces):
        rows[b] += piece
    self.assertTrue(done.all())
    for b, row in enumerate(rows):
      np.testing.assert_array_equal(row, self.greedy[b, :len(row)])
      self.assertLen(row, 40 if EOS not in self.greedy[b] else list(self.greedy[b]).index(EOS))

  def test_sharded_matches_one_device(self):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    sharded = llava_jax.load(self.tmp / "ours", mesh=mesh)
    self.assertIsNotNone(sharded.generator.mesh)
    out = sharded.generator.generate(self.prompts, self.pixels, max_new_tokens=40,
                                     keep_eos=True)
    np.testing.assert_array_equal(out, self.greedy)
    # One row (smaller than the batch axes) works too.
    one = sharded.generator.generate(self.prompts[1:2], self.pixels[1:2], max_new_tokens=40,
                                     keep_eos=True)
    np.testing.assert_array_equal(one[0], self.greedy[1])

  def test_chat_stream_and_stop_strings(self):
    image = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    text = self.model.chat(image, "What is in the image?", max_new_tokens=24)
    pieces = list(self.model.chat(image, "What is in the image?", max_new_tokens=24,
                                  stream=True))
    self.assertEqual("".join(pieces), text)
    self.assertGreater(len(text), 0)
    cut = text[len(text) // 2:len(text) // 2 + 2]
    stopped = self.model.chat(image, "What is in the image?", max_new_tokens=24, stop=[cut])
    self.assertEqual(stopped, text[:text.index(cut)])
    again = self.model.chat(image, "And then?", history=[("What is in the image?", text)],
                            max_new_tokens=8)
    self.assertIsInstance(again, str)

  def test_prompt_longer_than_context_is_an_error(self):
    with self.assertRaisesRegex(prompting.PromptError, "longer than the model's context"):
      self.model.chat(None, "word " * 400)
    with self.assertRaisesRegex(ValueError, "exceeds the model's context"):
      self.model.generator.generate(self.prompts[:1], self.pixels[:1], max_new_tokens=250)


if __name__ == "__main__":
  absltest.main()
