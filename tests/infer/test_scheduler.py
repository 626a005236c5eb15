"""Continuous batching (llava_jax.infer.scheduler) gives each request what static generation gives."""

import pathlib
import tempfile

from absl.testing import absltest
import numpy as np

import llava_hf_fixtures as fx
from llava_jax.infer import sampling
from llava_jax.infer import scheduler


def _run(sched: scheduler.SlotScheduler, requests, arrive_at):
  """Feeds requests[i] at chunk number arrive_at[i]; returns each one's ids, and the chunks at
  which each joined and finished."""
  out = {i: [] for i in range(len(requests))}
  joined_at, finished_at, waiting, rows, chunk = {}, {}, list(range(len(requests))), {}, 0
  while waiting or rows:
    for i in [i for i in waiting if arrive_at[i] <= chunk]:
      joined = sched.try_join(requests[i])
      if joined is None:
        continue
      waiting.remove(i)
      row, tokens = joined
      joined_at[i] = chunk
      out[i] += tokens.ids
      if tokens.done:
        sched.release(row)
        finished_at[i] = chunk
      else:
        rows[row] = i
    for row, tokens in sched.step().items():
      out[rows[row]] += tokens.ids
      if tokens.done:
        sched.release(row)
        finished_at[rows.pop(row)] = chunk
    chunk += 1
  return out, joined_at, finished_at


class SchedulerTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    _, cls.model = fx.imported_llava(pathlib.Path(tempfile.mkdtemp()), seed=2)
    rng = np.random.default_rng(0)
    cls.requests = []
    for i, (n, budget) in enumerate([(20, 12), (45, 9), (7, 20), (33, 5), (60, 16)]):
      ids = rng.integers(5, 1000, n).tolist()
      temp = 0.0 if i % 2 == 0 else 0.9
      cls.requests.append(scheduler.Request(
          ids, np.zeros((1, 32, 32, 3), np.float32),
          sampling.SamplingParams(temperature=temp, top_p=0.9, seed=i), budget))

  def _expected(self, request):
    gen = self.model.generator
    ids = gen.generate([request.prompt_ids], request.pixels[None], params=request.params,
                       max_new_tokens=request.max_new_tokens, keep_eos=True)[0]
    ids = ids.tolist()
    if gen.eos_ids[0] in ids:
      ids = ids[:ids.index(gen.eos_ids[0]) + 1]
    return [t for t in ids if t != gen.pad_id]

  def test_requests_join_the_running_batch_and_match_static_generation(self):
    # 2 slots, 5 requests arriving over time, greedy and sampled.
    sched = scheduler.SlotScheduler(self.model.generator, slots=2, chunk_size=4)
    out, joined, finished = _run(sched, self.requests, arrive_at=[0, 0, 1, 2, 2])
    for i, request in enumerate(self.requests):
      self.assertEqual(out[i], self._expected(request), f"request {i}")
    # Some request joined while an earlier one was still decoding (static batching never does).
    self.assertTrue(any(joined[i] < joined[j] < finished[i] for i in joined for j in joined),
                    (joined, finished))

  def test_compaction_when_the_shared_index_runs_out(self):
    rng = np.random.default_rng(1)
    long_one = scheduler.Request(rng.integers(5, 1000, 10).tolist(), self.requests[0].pixels,
                                 sampling.SamplingParams(), 40)
    late = scheduler.Request(rng.integers(5, 1000, 30).tolist(), self.requests[0].pixels,
                             sampling.SamplingParams(temperature=0.7, seed=3), 30)
    # Index starts at 32 and reaches 52 after 5 chunks; 52 + 30 > 80 slots: shift left by 20.
    sched = scheduler.SlotScheduler(self.model.generator, slots=2, cache_len=80, chunk_size=4)
    out, joined, finished = _run(sched, [long_one, late], arrive_at=[0, 5])
    self.assertEqual(sched.compactions, 1)
    self.assertLess(joined[1], finished[0])
    self.assertEqual(out[0], self._expected(long_one))
    self.assertEqual(out[1], self._expected(late))

  def test_logprobs_are_log_softmax_of_the_logits(self):
    request = scheduler.Request(self.requests[0].prompt_ids, self.requests[0].pixels,
                                sampling.SamplingParams(), 3, logprobs=True)
    sched = scheduler.SlotScheduler(self.model.generator, slots=2, chunk_size=4)
    row, first = sched.try_join(request)
    rest = sched.step()[row]
    ids = first.ids + rest.ids
    lps = first.logprobs + rest.logprobs
    # Greedy: the sampled token is the most likely one, and logprobs are <= 0 and sorted.
    self.assertEqual(first.top_ids[0][0], first.ids[0])
    self.assertEqual(len(first.top_ids[0]), scheduler.TOP_LOGPROBS)
    self.assertTrue(np.all(np.diff(first.top_logprobs[0]) <= 0))
    # Against the full forward pass: logits at the prompt end and after each new token.
    full = request.prompt_ids + ids
    logits = self.model.logits(np.array([full[:-1]]))[0]
    want = [float(np.log(np.exp(l - l.max()) / np.exp(l - l.max()).sum())[t])
            for l, t in zip(logits[len(request.prompt_ids) - 1:], ids)]
    np.testing.assert_allclose(lps, want, atol=2e-3)


if __name__ == "__main__":
  absltest.main()
