"""The seam between evaluators and whatever produces answers.

An `AnswerFn` takes a batch of user prompts (plain text, no `<image>` token) and, per prompt,
the path of its image or None, and returns one answer string per prompt. Evaluators only see
this function, so they are tested with a fake one; `model_answer_fn` (in-process model) and
`server_answer_fn` (any OpenAI-compatible endpoint, e.g. `python -m llava_jax.serve`) are the
real ones.
"""

import base64
import mimetypes
from typing import Callable, Sequence

import tqdm

from llava_jax import openai_client as client_lib

AnswerFn = Callable[[list[str], list[str | None]], list[str]]


def answer_all(prompts: Sequence[str], images: Sequence[str | None], answer_fn: AnswerFn, *,
               batch_size: int = 8, desc: str = "answering", progress: bool = True) -> list[str]:
  """Runs `answer_fn` over batches of `batch_size`, with a progress bar; answers in order."""
  if len(prompts) != len(images):
    raise ValueError(f"{len(prompts)} prompts but {len(images)} image entries")
  answers = []
  with tqdm.tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress) as bar:
    for start in range(0, len(prompts), batch_size):
      batch_prompts = list(prompts[start:start + batch_size])
      batch = answer_fn(batch_prompts, list(images[start:start + batch_size]))
      if len(batch) != len(batch_prompts):
        raise ValueError(f"answer_fn returned {len(batch)} answers for {len(batch_prompts)} "
                         "prompts")
      answers += [a.strip() for a in batch]
      bar.update(len(batch_prompts))
  return answers


def server_answer_fn(client: client_lib.ChatClient, *, max_tokens: int = 256,
                     temperature: float = 0.0, concurrency: int = 8) -> AnswerFn:
  """Answers through an OpenAI-compatible endpoint; a batch is sent as concurrent requests
  (which a batching server such as `llava_jax.serve` decodes together)."""

  def one(item: tuple[int, str, str | None]) -> str:
    _, prompt, image = item
    content: list[dict] = [{"type": "text", "text": prompt}]
    if image is not None:
      content.insert(0, {"type": "image_url", "image_url": {"url": _data_url(image)}})
    return client.complete([{"role": "user", "content": content}], temperature=temperature,
                           max_tokens=max_tokens)

  def answer(prompts: list[str], images: list[str | None]) -> list[str]:
    results = [""] * len(prompts)
    items = [(i, p, im) for i, (p, im) in enumerate(zip(prompts, images))]
    for (i, _, _), text, error in client_lib.map_concurrently(one, items, concurrency):
      if error is not None:
        raise error
      results[i] = text
    return results

  return answer


def _data_url(path: str) -> str:
  mime = mimetypes.guess_type(path)[0] or "image/png"
  with open(path, "rb") as f:
    return f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"
