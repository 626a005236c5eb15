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

FLAGS = flags.FLAGS


def _define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_enum("task", None, ["scienceqa", "llava_bench", "text"], "Which evaluation.")
  flags.DEFINE_string("data", None, "Task data file.")
  flags.DEFINE_string("ckpt", None, "Model to evaluate, loaded in this process.")
  flags.DEFINE_string("adapter", None, "LoRA adapters merged on load: a PEFT or LLaVA LoRA dir, or a LoRA workdir.")
  flags.DEFINE_string(
    "api_base", None, "Instead of --ckpt: an OpenAI-compatible server serving the model.")
  flags.DEFINE_string("model", None, "Model name sent to --api_base (default: none, "
                      "which llava_jax.serve accepts).")
  flags.DEFINE_string("out", None, "Results JSON (default: <task>_results.json).")
  flags.DEFINE_string("image_dir", None,
                      "Folder image paths are relative to (default: the data's).")
  flags.DEFINE_string("split", None, "ScienceQA problems.json split, e.g. 'test'.")
  flags.DEFINE_integer("batch_size", 8, "Prompts generated together.")
  flags.DEFINE_integer("max_new_tokens", 256, "Answer length limit.")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy decoding.")
  flags.DEFINE_integer("limit", None, "Evaluate only the first N items.")
  flags.DEFINE_string("judge_api_base", "https://api.openai.com/v1",
                      "llava_bench: OpenAI-compatible endpoint of the judge.")
  flags.DEFINE_string("judge_model", "gpt-4o", "llava_bench: judge model name.")
  flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY", "Environment variable with the key for the judge and "
    "--api_base (unset is fine for local servers).")
  flags.DEFINE_integer("judge_max_requests", None,
                       "llava_bench: request budget for the judge.")


def make_answer_fn() -> answering.AnswerFn:
  if (FLAGS.ckpt is None) == (FLAGS.api_base is None):
    raise app.UsageError("give exactly one of --ckpt and --api_base")
  if FLAGS.api_base is not None:
    client = client_lib.ChatClient(api_base=FLAGS.api_base, model=FLAGS.model,
                                   api_key=os.environ.get(FLAGS.api_key_env))
    return answering.server_answer_fn(client, max_tokens=FLAGS.max_new_tokens,
                                      temperature=FLAGS.temperature,
                                      concurrency=FLAGS.batch_size)
  from llava_jax.eval import model_answering  # Deferred: pulls in JAX and the model.
  return model_answering.load_answer_fn(FLAGS.ckpt, adapter=FLAGS.adapter,
                                        max_new_tokens=FLAGS.max_new_tokens,
                                        temperature=FLAGS.temperature)


def main(argv):
  del argv
  if FLAGS.task is None or FLAGS.data is None:
    raise app.UsageError("--task and --data are required")
  answer_fn = make_answer_fn()
  image_dir = FLAGS.image_dir or os.path.dirname(os.path.abspath(FLAGS.data))
  limit = slice(None, FLAGS.limit)
  out = FLAGS.out or f"{FLAGS.task}_results.json"
  if FLAGS.task == "scienceqa":
    summary, items = scienceqa.evaluate(
        scienceqa.load(FLAGS.data, FLAGS.split)[limit], answer_fn, image_dir=image_dir,
        batch_size=FLAGS.batch_size)
    table = scienceqa.table(summary)
  elif FLAGS.task == "llava_bench":
    judge = client_lib.ChatClient(
        api_base=FLAGS.judge_api_base, model=FLAGS.judge_model,
        api_key=os.environ.get(FLAGS.api_key_env),
        budget=client_lib.RequestBudget(FLAGS.judge_max_requests))
    summary, items = llava_bench.evaluate(
        llava_bench.load(FLAGS.data)[limit], answer_fn, judge, image_dir=image_dir,
        batch_size=FLAGS.batch_size, reviews_path=f"{out}.reviews.jsonl")
    table = llava_bench.table(summary)
  else:
    summary, items = text_rouge.evaluate(text_rouge.load(FLAGS.data)[limit], answer_fn,
                                         batch_size=FLAGS.batch_size)
    table = text_rouge.table(summary)
  results.write(out, FLAGS.task, summary, items)
  print(table)
  print(f"results: {out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
