"""Continuous batching: a decode batch of KV-cache slots that requests join and leave at chunk
boundaries (the scheme of vLLM's and JetStream's schedulers), on `generate.Generator`'s
prefill and decode step.

One cache of B rows x S slots with llama's one shared write index. A joining request is
prefilled alone (its prompt left-padded to a bucket T) and its T cache slots are copied into a
free row so that its last prompt token sits at slot index - 1; the rest of the row is masked
(segment id 0). Each decode step writes slot `index` for every row, while positions and
sampling steps stay per row. When the index would run past S, all rows shift left together by
the slack before the oldest live row (compaction). A finished row frees its slot; the next
waiting request takes it at the next chunk boundary.

Letters: B = slots, S = cache slots, T = prompt bucket, M = images, C = chunk steps,
K = top log-probabilities kept, V = vocabulary.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from llava_jax.infer import generate as generate_lib
from llava_jax.infer import sampling

TOP_LOGPROBS = 20  # the most `top_logprobs` a request may ask for (OpenAI's limit)


@dataclasses.dataclass
class Request:
  prompt_ids: list[int]
  pixels: np.ndarray                     # float32[M, H, W, 3]
  params: sampling.SamplingParams
  max_new_tokens: int
  logprobs: bool = False


@dataclasses.dataclass
class Tokens:
  """What one row produced in one chunk. `eos` is True when its last id is the EOS that ended it."""
  ids: list[int]
  logprobs: list[float]
  top_ids: list[list[int]]
  top_logprobs: list[list[float]]
  done: bool
  eos: bool


class SlotScheduler:
  """Continuous batching over `generator` (see the module docstring). Not thread-safe: one
  worker thread calls `join`, `step` and `release`.

  Args:
    generator: the `generate.Generator` whose model, params and EOS/pad ids are used.
    slots: rows of the decode batch (B).
    cache_len: slots per row (S); defaults to the model's context.
    chunk_size: decode steps per `step` call (requests join between chunks).
  """

  def __init__(self, generator: generate_lib.Generator, slots: int, cache_len: int | None = None,
               chunk_size: int = 8):
    self.gen = generator
    self.slots = slots
    self.cache_len = cache_len or generator.max_len
    self.chunk_size = chunk_size
    self._params = generator.params
    if not isinstance(self._params["llm"]["layers"], tuple):
      self._params = generator.split_layers(self._params)  # once, not per chunk
    # Built by jit so that every array is its own buffer (init_cache shares one zeros array,
    # which donation would hand over twice).
    cache = jax.jit(lambda: generator.model.init_cache(slots, self.cache_len))()
    self._state = dict(cache=cache, last=jnp.full((slots,), generator.pad_id, jnp.int32),
                       position=jnp.zeros((slots,), jnp.int32),
                       count=jnp.zeros((slots,), jnp.int32), done=jnp.ones((slots,), bool),
                       budget=jnp.zeros((slots,), jnp.int32))
    self._index = 0                       # host copy of the cache's shared write index
    self._start = [0] * slots             # first real slot of each live row
    self._live: dict[int, Request] = {}
    self.compactions = 0                  # how often rows were shifted left (tests read it)
    self._sample = {k: v.copy() for k, v in
                    sampling.stack_params([sampling.SamplingParams()] * slots).items()}
    self._join = jax.jit(self._join_impl, static_argnames=("top_n",), donate_argnames=("state",))
    self._chunk = jax.jit(self._chunk_impl, static_argnames=("top_n", "steps"),
                          donate_argnames=("state",))
    self._shift = jax.jit(self._shift_impl, donate_argnames=("state",))

  # --- device programs ---------------------------------------------------------------------

  def _pick(self, logits_BxV, step_B, sample_kw, top_n: int):
    """Sampled ids int32[B] and their log-probabilities (+ the top_n most likely)."""
    token_B = sampling.sample(logits_BxV, step_B, **sample_kw)
    logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    logp_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
    if top_n:
      top_lp_BxK, top_id_BxK = jax.lax.top_k(logp_BxV, top_n)
    else:
      top_lp_BxK = jnp.zeros((token_B.shape[0], 0), jnp.float32)
      top_id_BxK = jnp.zeros((token_B.shape[0], 0), jnp.int32)
    return token_B, logp_B, top_id_BxK.astype(jnp.int32), top_lp_BxK

  def _join_impl(self, params, state, ids_1xT, pixels_1xMxHxWx3, length_1, row, budget,
                 sample_kw, *, top_n: int):
    """Prefills one prompt and copies its cache into `row`, ending at the shared index."""
    prompt_len = ids_1xT.shape[1]
    logits_1xV, row_cache = self.gen.prefill(params, ids_1xT, pixels_1xMxHxWx3, length_1,
                                             prompt_len)
    token_1, logp_1, top_id_1xK, top_lp_1xK = self._pick(logits_1xV, jnp.zeros((1,), jnp.int32),
                                                         sample_kw, top_n)
    cache = state["cache"]
    start = cache["index"] - prompt_len

    def place(big_BxKxSxDh, small_1xKxTxDh):
      return jax.lax.dynamic_update_slice(big_BxKxSxDh, small_1xKxTxDh.astype(big_BxKxSxDh.dtype),
                                          (row, 0, start, 0))

    segments_S = jax.lax.dynamic_update_slice(
        jnp.zeros((self.cache_len,), jnp.int32), row_cache["segment_ids"][0], (start,))
    cache = dict(cache, k=tuple(map(place, cache["k"], row_cache["k"])),
                 v=tuple(map(place, cache["v"], row_cache["v"])),
                 segment_ids=cache["segment_ids"].at[row].set(segments_S))
    eos = jnp.isin(token_1[0], jnp.array(self.gen.eos_ids, jnp.int32))
    state = dict(state, cache=cache, last=state["last"].at[row].set(token_1[0]),
                 position=state["position"].at[row].set(length_1[0]),
                 count=state["count"].at[row].set(1),
                 done=state["done"].at[row].set(eos | (budget <= 1)),
                 budget=state["budget"].at[row].set(budget))
    return state, (token_1, logp_1, top_id_1xK, top_lp_1xK, eos)

  def _chunk_impl(self, params, state, sample_kw, *, top_n: int, steps: int):
    """Up to `steps` decode steps for every live row; -1 where a row made no token."""
    slots = state["last"].shape[0]
    eos_V = jnp.array(self.gen.eos_ids, jnp.int32)
    out = dict(ids=jnp.full((slots, steps), -1, jnp.int32),
               logp=jnp.zeros((slots, steps), jnp.float32),
               top_id=jnp.zeros((slots, steps, top_n), jnp.int32),
               top_lp=jnp.zeros((slots, steps, top_n), jnp.float32),
               eos=jnp.zeros((slots,), bool))

    def cond(carry):
      i, s, _ = carry
      return (i < steps) & ~jnp.all(s["done"])

    def body(carry):
      i, s, o = carry
      logits_BxV, cache = self.gen.decode_step(params, s["last"], s["position"], s["cache"])
      token_B, logp_B, top_id_BxK, top_lp_BxK = self._pick(logits_BxV, s["count"], sample_kw,
                                                           top_n)
      live_B = ~s["done"]
      eos_B = live_B & jnp.isin(token_B, eos_V)
      o = dict(ids=o["ids"].at[:, i].set(jnp.where(live_B, token_B, -1)),
               logp=o["logp"].at[:, i].set(logp_B), top_id=o["top_id"].at[:, i].set(top_id_BxK),
               top_lp=o["top_lp"].at[:, i].set(top_lp_BxK), eos=o["eos"] | eos_B)
      s = dict(s, cache=cache, last=jnp.where(live_B, token_B, s["last"]),
               position=s["position"] + 1, count=s["count"] + live_B.astype(jnp.int32),
               done=s["done"] | eos_B | (s["count"] + 1 >= s["budget"]))
      return i + 1, s, o

    steps_run, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out))
    return state, out, steps_run

  def _shift_impl(self, state, shift):
    """Moves every row `shift` slots left (the slots before the oldest live row are free)."""
    cache = state["cache"]
    index = cache["index"] - shift
    roll = functools.partial(jnp.roll, shift=-shift, axis=2)
    slot_S = jnp.arange(self.cache_len, dtype=jnp.int32)
    segments_BxS = jnp.roll(cache["segment_ids"], -shift, axis=1)
    segments_BxS = jnp.where(slot_S[None, :] < index, segments_BxS, 0)
    cache = dict(cache, k=tuple(map(roll, cache["k"])), v=tuple(map(roll, cache["v"])),
                 segment_ids=segments_BxS, index=index)
    return dict(state, cache=cache)

  # --- host side -----------------------------------------------------------------------------

  @property
  def live(self) -> int:
    return len(self._live)

  def free(self) -> bool:
    return len(self._live) < self.slots

  def _prompt_bucket(self, request: Request) -> int:
    n, budget = len(request.prompt_ids), request.max_new_tokens
    return max(n, min(generate_lib._round_up(n, self.gen.bucket), self.cache_len - budget))

  def check(self, request: Request):
    """Raises ValueError for a request that can never fit a slot."""
    n = len(request.prompt_ids)
    if n == 0 or request.max_new_tokens < 1:
      raise ValueError("scheduler: empty prompt or max_new_tokens < 1")
    if n + request.max_new_tokens > self.cache_len:
      raise ValueError(f"scheduler: prompt ({n}) + max_new_tokens ({request.max_new_tokens}) "
                       f"exceeds the {self.cache_len} cache slots")

  def try_join(self, request: Request) -> tuple[int, Tokens] | None:
    """Puts `request` in a free slot now, or returns None if it must wait for the next chunk
    boundary (no free slot, or the shared index leaves no room for its prompt or budget)."""
    self.check(request)
    if not self.free():
      return None
    prompt_len = self._prompt_bucket(request)
    budget = request.max_new_tokens
    if not self._live:
      self._set_index(prompt_len)
    else:
      if self._index < prompt_len:
        return None  # the prompt does not fit before the index yet; it will after a chunk
      if self._index + budget > self.cache_len:
        slack = min(min(self._start[r] for r in self._live), self._index - prompt_len)
        if self._index - slack + budget > self.cache_len:
          return None
        self._state = self._shift(self._state, jnp.int32(slack))
        self._index -= slack
        self.compactions += 1
        for r in self._live:
          self._start[r] -= slack
    row = next(r for r in range(self.slots) if r not in self._live)
    n = len(request.prompt_ids)
    ids_1xT = np.full((1, prompt_len), self.gen.pad_id, np.int32)
    ids_1xT[0, prompt_len - n:] = request.prompt_ids
    for key, value in sampling.stack_params([request.params]).items():
      self._sample[key][row] = value[0]
    row_kw = sampling.stack_params([request.params])
    self._state, first = self._join(
        self._params, self._state, ids_1xT, np.asarray(request.pixels, np.float32)[None],
        np.array([n], np.int32), np.int32(row), np.int32(budget), row_kw,
        top_n=TOP_LOGPROBS if request.logprobs else 0)
    token, logp, top_id, top_lp, eos = jax.device_get(first)
    self._live[row] = request
    self._start[row] = self._index - n
    done = bool(eos) or budget <= 1
    return row, Tokens([int(token[0])], [float(logp[0])], top_id[:1].tolist(),
                       top_lp[:1].tolist(), done, bool(eos))

  def _set_index(self, index: int):
    cache = self._state["cache"]
    self._state = dict(self._state, cache=dict(cache, index=jnp.int32(index)))
    self._index = index

  def step(self) -> dict[int, Tokens]:
    """One chunk of decode steps; the new tokens of each live row. Finished rows stay in their
    slot until `release`."""
    if not self._live:
      return {}
    top_n = TOP_LOGPROBS if any(r.logprobs for r in self._live.values()) else 0
    self._state, out, steps_run = self._chunk(self._params, self._state, self._sample,
                                              top_n=top_n, steps=self.chunk_size)
    out, done_B, steps_run = jax.device_get((out, self._state["done"], steps_run))
    self._index += int(steps_run)
    result = {}
    for row in self._live:
      made = out["ids"][row] >= 0
      result[row] = Tokens(out["ids"][row][made].tolist(), out["logp"][row][made].tolist(),
                           out["top_id"][row][made].tolist(), out["top_lp"][row][made].tolist(),
                           bool(done_B[row]), bool(out["eos"][row]))
    return result

  def release(self, row: int):
    """Frees `row` (finished, stopped by a stop string, or its client left)."""
    self._live.pop(row, None)
    self._state = dict(self._state, done=self._state["done"].at[row].set(True))
    if not self._live:
      self._index = 0
