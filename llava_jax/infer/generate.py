"""Batched generation: a jitted prefill and a jitted on-device decode loop with a KV cache.

Prompts of different lengths are left-padded to a bucketed length T, so every row's last prompt
token sits at T - 1, the first new token comes straight from the prefill logits, and decode step
s writes cache slot T + s - 1 for all rows at once (positions stay per row: len_b + s - 1).

The loop (`lax.while_loop`) runs until every row is done or `end_step`; streaming calls the same
compiled loop again with a later `end_step` and reads the new tokens in between (that is also
where stop strings, which only the host can see, cancel rows). Shapes are bucketed (batch to a
power of two, T and the new-token budget N to multiples of `bucket`) so a server compiles a
handful of programs, not one per request.

Letters: B = batch, T = prompt length (padded), N = new-token budget (padded), S = T + N cache
slots, M = images per row, V = vocabulary.
"""

from collections.abc import Iterator, Sequence
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax import sharding
from llava_jax.infer import sampling
from llava_jax.model import llama


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def left_padded_layout(lengths_B, width: int):
  """(segment_ids, positions) int32[B, width] for rows right-aligned in `width` slots."""
  pad_B = width - lengths_B
  slot_T = jnp.arange(width, dtype=jnp.int32)
  segment_ids_BxT = (slot_T[None, :] >= pad_B[:, None]).astype(jnp.int32)
  positions_BxT = jnp.maximum(slot_T[None, :] - pad_B[:, None], 0)
  return segment_ids_BxT, positions_BxT


@dataclasses.dataclass(frozen=True)
class _Shapes:
  batch: int
  prompt_len: int
  max_new: int


class Generator:
  """Generation for one Llava module + params (sharded or on one device).

  Args:
    model: the `llava_jax.model.Llava` module.
    params: its parameter tree (unboxed), already placed (one device or sharded on `mesh`).
    eos_ids: ids that end a row (streamed text never includes them).
    pad_id: id used for left padding and for steps after a row is done.
    max_len: the decoder's context (positions beyond it are refused).
    mesh: the mesh `params` are sharded on (by the training rules table), or None. Batch
      inputs are then placed like training batches; XLA propagates the rest (KV cache too).
    bucket: prompt length and new-token budget are padded to multiples of this.
  """

  def __init__(self, model, params, *, eos_ids: Sequence[int], pad_id: int, max_len: int,
               mesh=None, bucket: int = 32):
    self.model = model
    self.params = params
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.pad_id = int(pad_id)
    self.max_len = int(max_len)
    self.mesh = mesh
    self.bucket = bucket
    # The compiled programs, public for benchmarks and ahead-of-time compiles (aot.py):
    # start(params, *place(ids, pixels, lengths, max_new), sample_kw, max_new=) -> loop state
    # (prefill + first token); decode_until(params, state, end_step, cancel_B, sample_kw) -> state
    # (decodes until every row is done or end_step tokens exist); split_layers(params).
    self.start = jax.jit(self._start_impl, static_argnames=("max_new",))
    self.decode_until = jax.jit(self._continue_impl, donate_argnames=("state",))
    self.split_layers = jax.jit(self._split_layers_impl)

  # --- device programs ---------------------------------------------------------------------

  def prefill(self, params, input_ids_BxT, pixels_BxMxHxWx3, lengths_B, cache_len: int):
    """Runs left-padded prompts into a fresh cache of `cache_len` slots (traceable).

    Returns (logits float32[B, V] at each row's last prompt token, cache).
    """
    batch, prompt_len = input_ids_BxT.shape
    segment_ids_BxT, positions_BxT = left_padded_layout(lengths_B, prompt_len)
    cache = llama.init_cache(self.model.cfg.llm, batch, cache_len, jnp.dtype(self.model.cfg.dtype))
    variables = {"params": params}
    # Hidden states, not logits: only the last position needs the [B, V] projection.
    hidden_BxTxD, cache = self.model.apply(
        variables, input_ids_BxT, pixels_BxMxHxWx3, segment_ids=segment_ids_BxT,
        positions=positions_BxT, cache=cache, return_hidden=True)
    logits_BxV = self.model.apply(variables, hidden_BxTxD[:, -1:], method="lm_logits")[:, 0]
    return logits_BxV, cache

  def decode_step(self, params, last_B, position_B, cache):
    """One token per row against the cache (traceable): (logits float32[B, V], cache)."""
    logits_Bx1xV, cache = self.model.apply(
        {"params": params}, last_B[:, None], position_B[:, None], cache, method="decode")
    return logits_Bx1xV[:, 0], cache

  def _start_impl(self, params, input_ids_BxT, pixels_BxMxHxWx3, lengths_B, max_new_B, sample_kw,
                  *, max_new: int):
    """Prefill + first token. Returns the loop state."""
    batch, prompt_len = input_ids_BxT.shape
    logits_BxV, cache = self.prefill(params, input_ids_BxT, pixels_BxMxHxWx3, lengths_B,
                                     prompt_len + max_new)
    token_B = sampling.sample(logits_BxV, jnp.int32(0), **sample_kw)
    eos_B = jnp.isin(token_B, jnp.array(self.eos_ids, jnp.int32))
    tokens_BxN = jnp.full((batch, max_new), self.pad_id, jnp.int32).at[:, 0].set(token_B)
    return dict(cache=cache, tokens=tokens_BxN, last=token_B, lengths=lengths_B,
                step=jnp.int32(1), done=eos_B | (max_new_B <= 1), eos=eos_B, max_new=max_new_B,
                count=jnp.ones((batch,), jnp.int32))

  def _split_layers_impl(self, params):
    """params with the decoder's stacked layer weights as a tuple of per-layer trees (see
    llama.split_layer_params: the decode loop then reads each weight once per step)."""
    return llama.split_decoder_params(params, self.model.cfg.llm.layers)

  def _continue_impl(self, params, state, end_step, cancel_B, sample_kw):
    """Decodes until every row is done or `end_step` new tokens exist."""
    batch, max_new = state["tokens"].shape
    eos_V = jnp.array(self.eos_ids, jnp.int32)
    params = self._split_layers_impl(params)  # outside the loop; a no-op on split params
    end_step = jnp.minimum(end_step, max_new)

    def cond(s):
      return (s["step"] < end_step) & ~jnp.all(s["done"])

    def body(s):
      step = s["step"]
      logits_BxV, cache = self.decode_step(params, s["last"], s["lengths"] + step - 1,
                                           s["cache"])
      token_B = sampling.sample(logits_BxV, step, **sample_kw)
      token_B = jnp.where(s["done"], self.pad_id, token_B)
      eos_B = ~s["done"] & jnp.isin(token_B, eos_V)
      done_B = s["done"] | eos_B | (step + 1 >= s["max_new"])
      tokens_BxN = jax.lax.dynamic_update_slice(s["tokens"], token_B[:, None], (0, step))
      return dict(s, cache=cache, tokens=tokens_BxN, last=token_B, step=step + 1, done=done_B,
                  eos=s["eos"] | eos_B, count=s["count"] + (~s["done"]).astype(jnp.int32))

    state = dict(state, done=state["done"] | cancel_B)
    return jax.lax.while_loop(cond, body, state)

  def place(self, *arrays):
    """Batch inputs on the mesh: split over the batch axes as in training when the padded
    batch divides evenly, else replicated. One device: left to jit."""
    if self.mesh is None:
      return arrays
    rows = arrays[0].shape[0]
    even = rows % (self.mesh.shape["data"] * self.mesh.shape["fsdp"]) == 0
    target = sharding.batch_sharding(self.mesh) if even else sharding.replicated(self.mesh)
    return jax.device_put(arrays, target)

  # --- host side -----------------------------------------------------------------------------

  def prepare(self, prompts: Sequence[Sequence[int]], pixels, params, max_new_tokens):
    """Left-pads and buckets the batch for `start`.

    Returns (n real rows, shapes, ids int32[B, T], pixels, lengths_B, max_new_B, sample_kw).
    """
    n = len(prompts)
    if n == 0:
      raise ValueError("generate: empty batch")
    if isinstance(params, sampling.SamplingParams) or params is None:
      params = [params or sampling.SamplingParams()] * n
    if isinstance(max_new_tokens, int):
      max_new_tokens = [max_new_tokens] * n
    if len(params) != n or len(max_new_tokens) != n:
      raise ValueError(f"generate: {n} prompts but {len(params)} sampling params and "
                       f"{len(max_new_tokens)} max_new_tokens")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
      raise ValueError("generate: empty prompt")
    if min(max_new_tokens) < 1:
      raise ValueError(f"generate: max_new_tokens must be >= 1, got {min(max_new_tokens)}")
    longest = max(l + m for l, m in zip(lengths, max_new_tokens))
    if longest > self.max_len:
      raise ValueError(f"generate: prompt + max_new_tokens = {longest} exceeds the model's "
                       f"context of {self.max_len} tokens")
    shapes = _Shapes(batch=_pow2_at_least(n), prompt_len=_round_up(max(lengths), self.bucket),
                     max_new=_round_up(max(max_new_tokens), self.bucket))
    ids_BxT = np.full((shapes.batch, shapes.prompt_len), self.pad_id, np.int32)
    for b, p in enumerate(prompts):
      ids_BxT[b, shapes.prompt_len - len(p):] = p
    # Filler rows repeat row 0's last token and stop at once; their output is dropped.
    ids_BxT[n:, -1] = ids_BxT[0, -1]
    lengths_B = np.array(lengths + [1] * (shapes.batch - n), np.int32)
    max_new_B = np.array(list(max_new_tokens) + [1] * (shapes.batch - n), np.int32)
    pixels = np.asarray(pixels, np.float32)
    if pixels.shape[0] != n:
      raise ValueError(f"generate: {n} prompts but pixels for {pixels.shape[0]}")
    pixels = np.concatenate([pixels, np.zeros((shapes.batch - n,) + pixels.shape[1:],
                                              np.float32)])
    sample_kw = sampling.stack_params(list(params) + [sampling.SamplingParams()] *
                                      (shapes.batch - n))
    return n, shapes, ids_BxT, pixels, lengths_B, max_new_B, sample_kw

  def stream(self, prompts: Sequence[Sequence[int]], pixels, *, params=None,
             max_new_tokens: int | Sequence[int] = 64, cancel: np.ndarray | None = None,
             chunk_size: int = 4) -> Iterator[tuple[list[list[int]], np.ndarray, np.ndarray]]:
    """Yields (new ids per row, done[B], ended_by_eos[B]) every `chunk_size` decode steps.

    prompts: token id lists (image tokens already expanded); pixels: float32[B, M, H, W, 3].
    params: one SamplingParams for all rows or one per row. EOS ids are not yielded.
    cancel: bool[B] the caller may set between yields (e.g. a stop string was seen) to end
      rows early; they then yield nothing more.
    """
    n, shapes, ids_BxT, pixels, lengths_B, max_new_B, sample_kw = self.prepare(
        prompts, pixels, params, max_new_tokens)
    # Split once per request, not once per chunk, unless the params already are (llava_jax.load
    # keeps them split): a split copies every decoder weight until the request ends.
    weights = self.params
    if not isinstance(weights["llm"]["layers"], tuple):
      weights = self.split_layers(weights)
    state = self.start(weights, *self.place(ids_BxT, pixels, lengths_B, max_new_B),
                        sample_kw, max_new=shapes.max_new)
    cancel_B = np.zeros(shapes.batch, bool)
    sent = np.zeros(n, np.int32)
    while True:
      tokens_BxN, done_B, eos_B, count_B, step = jax.device_get(
          (state["tokens"], state["done"], state["eos"], state["count"], state["step"]))
      pieces = []
      for b in range(n):
        # A row's own tokens are its first count_b; the EOS that ended it is not text.
        end = count_b = int(count_B[b])
        if eos_B[b]:
          end = count_b - 1
        row = [] if cancel is not None and cancel[b] else tokens_BxN[b, sent[b]:end].tolist()
        pieces.append(row)
        sent[b] = max(sent[b], end)
      done = done_B[:n] | (cancel[:n] if cancel is not None else False)
      yield pieces, done, eos_B[:n]
      if cancel is not None:
        cancel_B[:n] = cancel[:n]
      if np.all(done):
        return
      state = self.decode_until(weights, state, np.int32(step + chunk_size), cancel_B, sample_kw)

  def generate(self, prompts: Sequence[Sequence[int]], pixels, *, params=None,
               max_new_tokens: int | Sequence[int] = 64, keep_eos: bool = False) -> np.ndarray:
    """int32[B, max(max_new_tokens)] new ids; `pad_id` after a row's end.

    The EOS that ends a row is kept when `keep_eos` (as transformers' generate does).
    """
    n, shapes, ids_BxT, pixels, lengths_B, max_new_B, sample_kw = self.prepare(
        prompts, pixels, params, max_new_tokens)
    state = self.start(self.params, *self.place(ids_BxT, pixels, lengths_B, max_new_B),
                        sample_kw, max_new=shapes.max_new)
    state = self.decode_until(self.params, state, np.int32(shapes.max_new),
                           np.zeros(shapes.batch, bool), sample_kw)
    tokens_BxN = np.asarray(jax.device_get(state["tokens"]))[:n]
    if not keep_eos:
      tokens_BxN = np.where(np.isin(tokens_BxN, self.eos_ids), self.pad_id, tokens_BxN)
    width = max(max_new_tokens) if not isinstance(max_new_tokens, int) else max_new_tokens
    return tokens_BxN[:, :width]
