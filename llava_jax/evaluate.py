r"""Evaluate a model on ScienceQA, LLaVA-Bench or text tasks.

  python -m llava_jax.evaluate --ckpt=DIR --task=scienceqa --data=problems.json
  python -m llava_jax.evaluate --ckpt=DIR --task=llava_bench --data=questions.jsonl \
      --judge_api_base=https://api.openai.com/v1 --judge_model=gpt-4o
  python -m llava_jax.evaluate --ckpt=DIR --task=text --data=tasks.jsonl

`--ckpt` loads the model in this process (anything `llava_jax.load` accepts) and generates in
batches of --batch_size; `--api_base` instead asks a running OpenAI-compatible server (such as
`python -m llava_jax.serve`). Writes --out (JSON: summary + per-item answers) and prints a table;
llava_bench also keeps the judge's reviews in <out>.reviews.jsonl and reuses them on a re-run.
Task details and data formats: `llava_jax/eval/{scienceqa,llava_bench,text_rouge}.py`.
"""

import os

from absl import app
from absl import flags

from llava_jax.datagen import client as client_lib
from llava_jax.eval import answering
from llava_jax.eval import llava_bench
from llava_jax.eval import results
from llava_jax.eval import scienceqa
from llava_jax.eval import text_rouge

_TASK = flags.DEFINE_enum("task", None, ["scienceqa", "llava_bench", "text"], "Which evaluation.")
_DATA = flags.DEFINE_string("data", None, "Task data file.")
_CKPT = flags.DEFINE_string("ckpt", None, "Model to evaluate, loaded in this process.")
_API_BASE = flags.DEFINE_string(
    "api_base", None, "Instead of --ckpt: an OpenAI-compatible server serving the model.")
_MODEL = flags.DEFINE_string("model", None, "Model name sent to --api_base (default: none, "
                             "which llava_jax.serve accepts).")
_OUT = flags.DEFINE_string("out", None, "Results JSON (default: <task>_results.json).")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None,
                                 "Folder image paths are relative to (default: the data's).")
_SPLIT = flags.DEFINE_string("split", None, "ScienceQA problems.json split, e.g. 'test'.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Prompts generated together.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 256, "Answer length limit.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy decoding.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N items.")
_JUDGE_API_BASE = flags.DEFINE_string("judge_api_base", "https://api.openai.com/v1",
                                      "llava_bench: OpenAI-compatible endpoint of the judge.")
_JUDGE_MODEL = flags.DEFINE_string("judge_model", "gpt-4o", "llava_bench: judge model name.")
_API_KEY_ENV = flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY", "Environment variable with the key for the judge and "
    "--api_base (unset is fine for local servers).")
_JUDGE_MAX_REQUESTS = flags.DEFINE_integer("judge_max_requests", None,
                                           "llava_bench: request budget for the judge.")


def make_answer_fn() -> answering.AnswerFn:
  if (_CKPT.value is None) == (_API_BASE.value is None):
    raise app.UsageError("give exactly one of --ckpt and --api_base")
  if _API_BASE.value is not None:
    client = client_lib.ChatClient(api_base=_API_BASE.value, model=_MODEL.value,
                                   api_key=os.environ.get(_API_KEY_ENV.value))
    return answering.server_answer_fn(client, max_tokens=_MAX_NEW_TOKENS.value,
                                      temperature=_TEMPERATURE.value,
                                      concurrency=_BATCH_SIZE.value)
  from llava_jax.eval import model_answering  # Deferred: pulls in JAX and the model.
  return model_answering.load_answer_fn(_CKPT.value, max_new_tokens=_MAX_NEW_TOKENS.value,
                                        temperature=_TEMPERATURE.value)


def main(argv):
  del argv
  if _TASK.value is None or _DATA.value is None:
    raise app.UsageError("--task and --data are required")
  answer_fn = make_answer_fn()
  image_dir = _IMAGE_DIR.value or os.path.dirname(os.path.abspath(_DATA.value))
  limit = slice(None, _LIMIT.value)
  out = _OUT.value or f"{_TASK.value}_results.json"
  if _TASK.value == "scienceqa":
    summary, items = scienceqa.evaluate(
        scienceqa.load(_DATA.value, _SPLIT.value)[limit], answer_fn, image_dir=image_dir,
        batch_size=_BATCH_SIZE.value)
    table = scienceqa.table(summary)
  elif _TASK.value == "llava_bench":
    judge = client_lib.ChatClient(
        api_base=_JUDGE_API_BASE.value, model=_JUDGE_MODEL.value,
        api_key=os.environ.get(_API_KEY_ENV.value),
        budget=client_lib.RequestBudget(_JUDGE_MAX_REQUESTS.value))
    summary, items = llava_bench.evaluate(
        llava_bench.load(_DATA.value)[limit], answer_fn, judge, image_dir=image_dir,
        batch_size=_BATCH_SIZE.value, reviews_path=f"{out}.reviews.jsonl")
    table = llava_bench.table(summary)
  else:
    summary, items = text_rouge.evaluate(text_rouge.load(_DATA.value)[limit], answer_fn,
                                         batch_size=_BATCH_SIZE.value)
    table = text_rouge.table(summary)
  results.write(out, _TASK.value, summary, items)
  print(table)
  print(f"results: {out}")


if __name__ == "__main__":
  app.run(main)
