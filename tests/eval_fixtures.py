"""Shared helpers for the benchmark tests: the sample data root and scripted models."""

import os
import re

from llava_jax.eval import answer_file
import tiny

REPO = str(tiny.REPO)
SAMPLES = os.path.join(REPO, "data", "eval_samples")


def scripted(answers: dict[str, str], default: str = "no idea", calls: list | None = None):
  """An AnswerFn answering each prompt by the first key it contains."""

  def answer(prompts, images):
    if calls is not None:
      calls.extend(zip(prompts, images))
    return [next((a for k, a in answers.items() if k in p), default) for p in prompts]

  return answer


def picks_option(option_text: str):
  """An AnswerFn that answers the letter of the option line whose text is `option_text`."""

  def answer(prompts, images):
    del images
    found = [re.search(rf"^([A-D])\. {re.escape(option_text)}$", p, re.M) for p in prompts]
    return [m.group(1) if m else "Z" for m in found]

  return answer


def runner(answer_fn, out_dir: str, budgets: list | None = None) -> answer_file.Runner:
  def answer_for(max_new_tokens):
    if budgets is not None:
      budgets.append(max_new_tokens)
    return answer_fn
  return answer_file.Runner(answer_for=answer_for, out_dir=out_dir, batch_size=2,
                            progress=False)
