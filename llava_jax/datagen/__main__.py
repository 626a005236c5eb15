"""GPT-assisted multimodal instruction data (LLaVA Sec. 3) from captions and boxes.

  python -m llava_jax.datagen --annotations=captions.json,instances.json --images=DIR \
      --out=OUT_DIR --types=conv,detail,reasoning --api_base=http://127.0.0.1:8000/v1 \
      --model=gpt-4o --api_key_env=OPENAI_API_KEY --max_requests=1000

Writes OUT_DIR/llava_instruct.json (LLaVA records) and per-type journals; re-running the same
command resumes where the last run stopped. See `llava_jax/datagen/generate.py`.
"""

import json
import os

from absl import app
from absl import flags

from llava_jax import openai_client as client_lib
from llava_jax.datagen import annotations as annotations_lib
from llava_jax.datagen import generate
from llava_jax.datagen import prompts

FLAGS = flags.FLAGS


def define_flags():
  """Flags exist only when this module is the program, so tests and tools can import it."""
  flags.DEFINE_list(
    "annotations", None, "A .jsonl of {image, captions, boxes}, or COCO captions[,instances] "
    "JSON files.", required=True)
  flags.DEFINE_string(
    "images", None, "Image directory; annotations whose image is missing are skipped.")
  flags.DEFINE_string("out", None, "Output directory (resumable).", required=True)
  flags.DEFINE_list("types", ["conv", "detail", "reasoning"], "Generators to run.")
  flags.DEFINE_string("api_base", "https://api.openai.com/v1",
                      "OpenAI-compatible base URL (…/v1).")
  flags.DEFINE_string("model", "gpt-4o", "Model name sent to the endpoint.")
  flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (may be unset "
    "for a local server).")
  flags.DEFINE_integer("concurrency", 4, "Requests in flight at most.")
  flags.DEFINE_integer(
    "max_requests", None, "Request budget for this run, retries included (default: no limit).")
  flags.DEFINE_integer("max_retries", 5, "Retries per request on 429/5xx.")
  flags.DEFINE_float("backoff_s", 1.0, "First retry delay; doubles per retry.")
  flags.DEFINE_float("timeout_s", 300.0, "Per-request HTTP timeout.")
  flags.DEFINE_float("temperature", 0.2, "Sampling temperature.")
  flags.DEFINE_integer("max_tokens", 1024, "Response length limit.")
  flags.DEFINE_integer("limit", None, "Use only the first N images.")
  flags.DEFINE_integer("seed", 0, "Seeds the per-record choice of instruction wording.")
  flags.DEFINE_string(
    "prompts_dir", prompts.PROMPTS_DIR, "Folder with conv/, detail/, reasoning/ prompt files "
    "(system_message.txt, NNN_context.txt + NNN_response.txt pairs).")


def main(argv):
  del argv
  anns = annotations_lib.load(FLAGS.annotations, FLAGS.images)[:FLAGS.limit]
  client = client_lib.ChatClient(
      api_base=FLAGS.api_base, model=FLAGS.model,
      api_key=os.environ.get(FLAGS.api_key_env),
      budget=client_lib.RequestBudget(FLAGS.max_requests), max_retries=FLAGS.max_retries,
      backoff_s=FLAGS.backoff_s, timeout_s=FLAGS.timeout_s)
  stats = generate.run(anns, FLAGS.types, client, FLAGS.out, images_dir=FLAGS.images,
                       concurrency=FLAGS.concurrency, temperature=FLAGS.temperature,
                       max_tokens=FLAGS.max_tokens, seed=FLAGS.seed,
                       prompts_dir=FLAGS.prompts_dir)
  print(generate.format_table(stats))
  print(f"requests sent: {client.budget.used}; records: "
        f"{os.path.join(FLAGS.out, generate.MERGED_FILE)}")
  print(json.dumps({k: s.to_dict() for k, s in stats.items()}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
