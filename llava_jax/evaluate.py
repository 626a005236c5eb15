r"""Evaluate a model: LLaVA-1.5's benchmark suite, ScienceQA, LLaVA-Bench or text tasks.

  python -m llava_jax.evaluate --ckpt=DIR --suite=llava15 --data_root=playground/data/eval \
      --out_dir=eval_out [--judge_api_base=... --judge_model=...]
  python -m llava_jax.evaluate --ckpt=DIR --task=natural_instructions \
      --data=natural-instructions/ --encoding=def_pos2
  python -m llava_jax.evaluate --task=natural_instructions --data=natural-instructions/ \
      --write_train=ni_train.json       # training records of the train tasks; no model needed
  python -m llava_jax.evaluate --ckpt=DIR --task=flan_heldout --data=text_inputs/ --heldout=nli

  python -m llava_jax.evaluate --ckpt=DIR --task=scienceqa --data=problems.json
  python -m llava_jax.evaluate --ckpt=DIR --task=llava_bench --data=questions.jsonl \
      --judge_api_base=https://api.openai.com/v1 --judge_model=gpt-4o
  python -m llava_jax.evaluate --ckpt=DIR --task=text --data=tasks.jsonl

`--ckpt` loads the model in this process (anything `llava_jax.load` accepts) and generates in
batches of --batch_size; `--api_base` instead asks a running OpenAI-compatible server (such as
`python -m llava_jax.serve`). Writes --out (JSON: summary + per-item answers) and prints a table;
llava_bench also keeps the judge's reviews in <out>.reviews.jsonl and reuses them on a re-run.
--suite=llava15 runs every benchmark folder found under --data_root (LLaVA's
playground/data/eval/ layout), journals answers in <out_dir>/<bench>/answers.jsonl (a killed run
resumes), prints LLaVA's model-zoo row and writes <out_dir>/llava15_results.json.
Task details and data formats: `llava_jax/eval/*.py` (one module per benchmark).
"""

import os

from absl import app
from absl import flags

from llava_jax import errors
from llava_jax import openai_client as client_lib
from llava_jax.eval import answer_file
from llava_jax.eval import answering
from llava_jax.eval import flan_heldout
from llava_jax.eval import llava_bench
from llava_jax.eval import natural_instructions
from llava_jax.eval import results
from llava_jax.eval import scienceqa
from llava_jax.eval import suite
from llava_jax.eval import text_rouge

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_enum("task", None, ["scienceqa", "llava_bench", "text", "natural_instructions",
                                   "flan_heldout"], "Which evaluation.")
  flags.DEFINE_enum("suite", None, ["llava15"], "A benchmark suite over --data_root.")
  flags.DEFINE_string("data_root", None, "--suite: folder holding the benchmarks' folders.")
  flags.DEFINE_string("out_dir", "eval_out", "--suite and text tasks: answers, uploads, results.")
  flags.DEFINE_list("benchmarks", None, "--suite: only these folders (e.g. gqa,pope).")
  flags.DEFINE_enum("encoding", "def_pos2", natural_instructions.ENCODINGS,
                    "natural_instructions: Tk-Instruct's prompt encoding.")
  flags.DEFINE_enum("heldout", None, flan_heldout.flan.TASKS, "flan_heldout: the unseen task.")
  flags.DEFINE_string("write_train", None, "natural_instructions / flan_heldout: write the "
                      "training records (LLaVA JSON) here instead of evaluating.")
  flags.DEFINE_string("data", None, "Task data file.")
  flags.DEFINE_string("ckpt", None, "Model to evaluate, loaded in this process.")
  flags.DEFINE_string("adapter", None, "LoRA adapters for --ckpt: a PEFT or LLaVA LoRA dir, or a LoRA workdir.")
  flags.DEFINE_bool("merge_adapter", True, "Fold --adapter into the base weights on load; "
                    "--nomerge_adapter applies it on the fly (a QLoRA base stays quantized).")
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
                      "llava_bench, --suite (MM-Vet, LLaVA-Bench): OpenAI-compatible endpoint of the judge "
                      "('' for none: those benchmarks are skipped).")
  flags.DEFINE_string("judge_model", "gpt-4o", "llava_bench: judge model name.")
  flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY", "Environment variable with the key for the judge and "
    "--api_base (unset is fine for local servers).")
  flags.DEFINE_integer("judge_max_requests", None,
                       "llava_bench: request budget for the judge.")


def make_answer_for():
  """max_new_tokens -> AnswerFn, over one server client or one model loaded once."""
  if (FLAGS.ckpt is None) == (FLAGS.api_base is None):
    raise app.UsageError("give exactly one of --ckpt and --api_base")
  if FLAGS.api_base is not None:
    client = client_lib.ChatClient(api_base=FLAGS.api_base, model=FLAGS.model,
                                   api_key=os.environ.get(FLAGS.api_key_env))
    return lambda budget: answering.server_answer_fn(
        client, max_tokens=budget, temperature=FLAGS.temperature, concurrency=FLAGS.batch_size)
  from llava_jax.eval import model_answering
  import llava_jax.infer.api  # Deferred: pulls in JAX and the model.
  model = llava_jax.infer.api.load(FLAGS.ckpt, adapter=FLAGS.adapter, merge=FLAGS.merge_adapter)
  return lambda budget: model_answering.model_answer_fn(model, max_new_tokens=budget,
                                                        temperature=FLAGS.temperature)


def make_answer_fn() -> answering.AnswerFn:
  return make_answer_for()(FLAGS.max_new_tokens)


def make_judge() -> client_lib.ChatClient:
  return client_lib.ChatClient(
      api_base=FLAGS.judge_api_base, model=FLAGS.judge_model,
      api_key=os.environ.get(FLAGS.api_key_env),
      budget=client_lib.RequestBudget(FLAGS.judge_max_requests))


def make_runner() -> answer_file.Runner:
  return answer_file.Runner(answer_for=make_answer_for(), out_dir=FLAGS.out_dir,
                            batch_size=FLAGS.batch_size,
                            model_id=os.path.basename(os.path.normpath(
                                FLAGS.ckpt or FLAGS.model or "server")))


def run_suite():
  if FLAGS.data_root is None:
    raise app.UsageError("--suite needs --data_root")
  runner = make_runner()
  judge = make_judge() if FLAGS.judge_api_base else None
  summary = suite.run(FLAGS.data_root, runner, judge,
                      set(FLAGS.benchmarks) if FLAGS.benchmarks else None)
  out = FLAGS.out or os.path.join(FLAGS.out_dir, f"{FLAGS.suite}_results.json")
  table = suite.table(summary, runner.model_id)
  results.write(out, FLAGS.suite, summary, [])
  print(table)
  print(f"results: {out}")


def run_text_protocol():
  """natural_instructions / flan_heldout: write training records, or evaluate the test side."""
  if FLAGS.task == "natural_instructions":
    if FLAGS.write_train:
      train = natural_instructions.training_records(
          natural_instructions.read_split(FLAGS.data, "train"), FLAGS.encoding)
    bench = f"natural_instructions_{FLAGS.encoding}"
  else:
    if FLAGS.heldout is None:
      raise app.UsageError("--task=flan_heldout needs --heldout")
    train, examples = flan_heldout.split(FLAGS.data, FLAGS.heldout)
    bench = f"flan_heldout_{FLAGS.heldout}"
  if FLAGS.write_train:
    answer_file.write_json(FLAGS.write_train, train)
    print(f"{len(train)} training records: {FLAGS.write_train}")
    return
  runner = make_runner()
  if FLAGS.task == "natural_instructions":
    summary, items = natural_instructions.evaluate(FLAGS.data, runner, FLAGS.encoding)
  else:
    summary, items = natural_instructions.evaluate_text(bench, examples, runner)
  out = FLAGS.out or os.path.join(FLAGS.out_dir, f"{bench}_results.json")
  results.write(out, bench, summary, items)
  print(natural_instructions.table(summary, f"{bench} (held-out): ROUGE-L and exact match (%)"))
  print(f"results: {out}")


def main(argv):
  del argv
  if FLAGS.suite is not None:
    return run_suite()
  if FLAGS.task in ("natural_instructions", "flan_heldout"):
    if FLAGS.data is None:
      raise app.UsageError(f"--task={FLAGS.task} needs --data")
    return run_text_protocol()
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
    judge = make_judge()
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
  define_flags()
  app.run(errors.one_line(main))
