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

from llava_jax.datagen import annotations as annotations_lib
from llava_jax.datagen import client as client_lib
from llava_jax.datagen import generate
from llava_jax.datagen import prompts

_ANNOTATIONS = flags.DEFINE_list(
    "annotations", None, "A .jsonl of {image, captions, boxes}, or COCO captions[,instances] "
    "JSON files.", required=True)
_IMAGES = flags.DEFINE_string(
    "images", None, "Image directory; annotations whose image is missing are skipped.")
_OUT = flags.DEFINE_string("out", None, "Output directory (resumable).", required=True)
_TYPES = flags.DEFINE_list("types", ["conv", "detail", "reasoning"], "Generators to run.")
_API_BASE = flags.DEFINE_string("api_base", "https://api.openai.com/v1",
                                "OpenAI-compatible base URL (…/v1).")
_MODEL = flags.DEFINE_string("model", "gpt-4o", "Model name sent to the endpoint.")
_API_KEY_ENV = flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (may be unset "
    "for a local server).")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 4, "Requests in flight at most.")
_MAX_REQUESTS = flags.DEFINE_integer(
    "max_requests", None, "Request budget for this run, retries included (default: no limit).")
_MAX_RETRIES = flags.DEFINE_integer("max_retries", 5, "Retries per request on 429/5xx.")
_BACKOFF_S = flags.DEFINE_float("backoff_s", 1.0, "First retry delay; doubles per retry.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 300.0, "Per-request HTTP timeout.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.2, "Sampling temperature.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 1024, "Response length limit.")
_LIMIT = flags.DEFINE_integer("limit", None, "Use only the first N images.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the per-record choice of instruction wording.")
_PROMPTS_DIR = flags.DEFINE_string(
    "prompts_dir", prompts.PROMPTS_DIR, "Folder with conv/, detail/, reasoning/ prompt files "
    "(system_message.txt, NNN_context.txt + NNN_response.txt pairs).")


def main(argv):
  del argv
  anns = annotations_lib.load(_ANNOTATIONS.value, _IMAGES.value)[:_LIMIT.value]
  client = client_lib.ChatClient(
      api_base=_API_BASE.value, model=_MODEL.value,
      api_key=os.environ.get(_API_KEY_ENV.value),
      budget=client_lib.RequestBudget(_MAX_REQUESTS.value), max_retries=_MAX_RETRIES.value,
      backoff_s=_BACKOFF_S.value, timeout_s=_TIMEOUT_S.value)
  stats = generate.run(anns, _TYPES.value, client, _OUT.value, images_dir=_IMAGES.value,
                       concurrency=_CONCURRENCY.value, temperature=_TEMPERATURE.value,
                       max_tokens=_MAX_TOKENS.value, seed=_SEED.value,
                       prompts_dir=_PROMPTS_DIR.value)
  print(generate.format_table(stats))
  print(f"requests sent: {client.budget.used}; records: "
        f"{os.path.join(_OUT.value, generate.MERGED_FILE)}")
  print(json.dumps({k: s.to_dict() for k, s in stats.items()}))


if __name__ == "__main__":
  app.run(main)
