r"""Open-loop load on the server at 127.0.0.1: static vs continuous batching, side by side.

  python -m llava_jax.bench.serve --ckpt=DIR [--rates=2,4,8] [--requests=32] [--max_tokens=64]

For each rate, requests arrive as a seeded Poisson process (open loop: an arrival does not wait
for earlier answers; at most --max_in_flight are open, later arrivals wait for one to close, so
the load stays bounded). Each asks for a random budget in [max_tokens/8, max_tokens] (greedy, a
demo image), streamed, so time to first token (TTFT) is seen. Both schedulers are served from
one process and run one after the other at each rate (alternating, so that machine load hits
both alike). Reports completion tokens/s, TTFT and latency p50/p99 per scheduler and rate.
"""

import asyncio
import base64
import json
import logging
import pathlib
import time

from absl import app
from absl import flags
import httpx
import numpy as np

from llava_jax.infer import prompting

DEMO_IMAGE = pathlib.Path(__file__).resolve().parents[2] / "data" / "demo" / "images" / (
    "outdoor_000.jpg")


def define_flags():
  flags.DEFINE_string("ckpt", None, "Model directory, training workdir or llava-hf dir.")
  flags.DEFINE_list("rates", ["2", "4", "8"], "Request rates to offer, requests/s.")
  flags.DEFINE_integer("requests", 32, "Requests per rate and scheduler.")
  flags.DEFINE_integer("max_tokens", 64, "Largest completion budget of a request.")
  flags.DEFINE_integer("max_batch", 8, "Decode batch (slots) of both schedulers.")
  flags.DEFINE_integer("max_in_flight", 64, "Most open requests (bounds the load).")
  flags.DEFINE_integer("seed", 0, "Arrival times and budgets.")
  flags.mark_flag_as_required("ckpt")


async def _one(client, url, body, t_arrive):
  first = None
  tokens = 0
  async with client.stream("POST", url, json=body) as response:
    if response.status_code != 200:
      return None
    async for line in response.aiter_lines():
      if not line.startswith("data: {"):
        continue
      chunk = json.loads(line[6:])
      if chunk.get("usage"):
        tokens = chunk["usage"]["completion_tokens"]
      elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
        first = time.perf_counter()
  end = time.perf_counter()
  return (first or end) - t_arrive, end - t_arrive, tokens


async def run_load(url: str, rate: float, budgets: list[int], gaps: list[float], image_url: str,
                   max_in_flight: int) -> dict:
  """Offers len(budgets) requests at `rate`; returns throughput and latency percentiles."""
  gate = asyncio.Semaphore(max_in_flight)
  limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
  async with httpx.AsyncClient(timeout=600, limits=limits) as client:
    async def request(budget, t_arrive):
      async with gate:
        body = {"temperature": 0, "max_tokens": budget, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": "Describe the image."}]}]}
        return await _one(client, url + "/v1/chat/completions", body, t_arrive)

    start = time.perf_counter()
    tasks = []
    for budget, gap in zip(budgets, gaps):
      await asyncio.sleep(max(0.0, start + gap - time.perf_counter()))
      tasks.append(asyncio.create_task(request(budget, time.perf_counter())))
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
  ok = [r for r in results if r is not None]
  ttft = np.array([r[0] for r in ok])
  latency = np.array([r[1] for r in ok])
  return dict(rate=rate, ok=len(ok), failed=len(results) - len(ok),
              tokens_per_s=sum(r[2] for r in ok) / wall,
              ttft_p50=np.percentile(ttft, 50), ttft_p99=np.percentile(ttft, 99),
              latency_p50=np.percentile(latency, 50), latency_p99=np.percentile(latency, 99))


def _warm_up(model, servers, image_url, max_batch, max_tokens):
  """Compiles every program the measured runs use (static: each power-of-two batch)."""
  ids, pixels = model.encode_messages([prompting.Message(
      "user", [DEMO_IMAGE.read_bytes(), "Describe the image."])])
  b = 1
  while b <= max_batch:
    for budget in range(model.generator.bucket, max_tokens + model.generator.bucket,
                        model.generator.bucket):  # every new-token bucket a batch may need
      model.generator.generate([ids] * b, np.stack([pixels] * b), max_new_tokens=budget)
    b *= 2
  for server in servers.values():
    asyncio.run(run_load(server.url, 100.0, [max_tokens] * 2, [0.0, 0.0], image_url, 4))


def main(argv):
  del argv
  from llava_jax.infer import loading
  from llava_jax.serving import app as serving

  f = flags.FLAGS
  logging.getLogger("httpx").setLevel(logging.WARNING)  # one log line per request otherwise
  model = loading.load_checked(f.ckpt)
  image_url = "data:image/jpeg;base64," + base64.b64encode(DEMO_IMAGE.read_bytes()).decode()
  servers = {}
  for scheduler in ("static", "continuous"):
    settings = serving.Settings(model_name="bench", scheduler=scheduler, max_batch=f.max_batch,
                                queue_size=f.max_in_flight, max_pending=f.max_in_flight + 1)
    servers[scheduler] = serving.Running(serving.make_app(model, settings), settings)
  try:
    _warm_up(model, servers, image_url, f.max_batch, f.max_tokens)
    rng = np.random.default_rng(f.seed)
    print(f"{'rate/s':>6} {'scheduler':>10} {'ok':>4} {'tok/s':>7} {'TTFT p50':>9} "
          f"{'TTFT p99':>9} {'lat p50':>8} {'lat p99':>8}", flush=True)
    for rate in [float(r) for r in f.rates]:
      budgets = rng.integers(max(1, f.max_tokens // 8), f.max_tokens + 1, f.requests).tolist()
      gaps = np.cumsum(rng.exponential(1.0 / rate, f.requests)).tolist()
      gaps = [0.0] + gaps[:-1]
      for scheduler, server in servers.items():
        r = asyncio.run(run_load(server.url, rate, budgets, gaps, image_url, f.max_in_flight))
        print(f"{rate:6.1f} {scheduler:>10} {r['ok']:4d} {r['tokens_per_s']:7.1f} "
              f"{r['ttft_p50']:8.2f}s {r['ttft_p99']:8.2f}s {r['latency_p50']:7.2f}s "
              f"{r['latency_p99']:7.2f}s", flush=True)
  finally:
    for server in servers.values():
      server.stop()


if __name__ == "__main__":
  define_flags()
  app.run(main)
