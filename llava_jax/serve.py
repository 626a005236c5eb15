r"""OpenAI-compatible HTTP endpoint on FastAPI + uvicorn (llava_jax/serving/).

  python -m llava_jax.serve --ckpt=DIR --port=8000 [--ui]

`POST /v1/chat/completions`, `GET /v1/models`, `GET /health`; `--ui` also serves the Gradio web
demo at `/` on the same worker. One worker thread owns the model (continuous batching by
default, `--scheduler=static` for the earlier scheme); the event loop only moves bytes, and
image decoding runs in `--preprocess_workers` threads. SIGTERM or Ctrl-C stops accepting,
finishes the requests in flight, then exits.
"""

import os
import sys

from absl import app
from absl import flags

from llava_jax import errors
from llava_jax import quiet

quiet.install()   # before the serving modules import transformers (and JAX probes for a TPU)

from llava_jax.infer import loading  # noqa: E402
from llava_jax.serving import app as app_lib  # noqa: E402
from llava_jax.serving import protocol  # noqa: E402
from llava_jax.serving import server  # noqa: E402


def define_flags():
  """Flags exist only when a program runs (tests import the modules)."""
  flags.DEFINE_string("ckpt", None, "Model directory, training workdir or llava-hf dir.")
  flags.DEFINE_string("adapter", None, "LoRA adapters for --ckpt: a PEFT or LLaVA LoRA dir, or a LoRA workdir.")
  flags.DEFINE_bool("merge_adapter", True, "Fold --adapter into the base weights on load; "
                    "--nomerge_adapter applies it on the fly (a QLoRA base stays quantized).")
  flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
  flags.DEFINE_string("model_name", None, "Model id to serve (default: the directory name).")
  flags.DEFINE_enum("scheduler", "continuous", ["continuous", "static"], "Decode batching.")
  flags.DEFINE_integer("max_batch", 8, "Most requests decoded together (KV-cache slots).")
  flags.DEFINE_integer("queue_size", 32, "Requests waiting for a slot before 503.")
  flags.DEFINE_integer("max_pending", 64, "Requests in flight (all stages) before 503.")
  flags.DEFINE_integer("preprocess_workers", 2, "Threads that decode images and tokenize.")
  flags.DEFINE_float("max_image_mb", 10.0, "Largest accepted encoded image, MiB.")
  flags.DEFINE_integer("max_image_pixels", 4096 * 4096, "Largest accepted width x height.")
  flags.DEFINE_float("max_body_mb", 16.0, "Largest accepted request body, MiB.")
  flags.DEFINE_float("timeout_s", 30.0, "Deadline for a request's headers and for its body.")
  flags.DEFINE_string("image_root", None, "Accept image_url parts that are local paths, only "
                      "for files under this directory (off by default).")
  flags.DEFINE_string("api_key_env", None, "Name of an environment variable holding the API "
                      "key that clients must send (Authorization: Bearer KEY).")
  flags.DEFINE_bool("ui", False, "Also serve the Gradio web demo at /.")
  flags.mark_flag_as_required("ckpt")


def settings_from_flags(name: str) -> app_lib.Settings:
  f = flags.FLAGS
  api_key = None
  if f.api_key_env:
    api_key = os.environ.get(f.api_key_env)
    if not api_key:
      raise SystemExit(f"error: --api_key_env={f.api_key_env} but that variable is empty or unset")
  limits = protocol.Limits(max_image_bytes=int(f.max_image_mb * (1 << 20)),
                           max_image_pixels=f.max_image_pixels, image_root=f.image_root)
  return app_lib.Settings(
      model_name=name, scheduler=f.scheduler, max_batch=f.max_batch, queue_size=f.queue_size,
      max_pending=f.max_pending, preprocess_workers=f.preprocess_workers,
      max_body_bytes=int(f.max_body_mb * (1 << 20)), body_timeout_s=f.timeout_s,
      header_timeout_s=f.timeout_s, api_key=api_key, limits=limits)


def run(ui: bool):
  """Loads --ckpt and serves until SIGTERM/SIGINT (shared by serve and webui)."""
  f = flags.FLAGS
  if f.image_root and not os.path.isdir(f.image_root):
    print(f"error: --image_root={f.image_root} is not a directory", file=sys.stderr)
    sys.exit(2)
  try:
    chat_model = loading.load_checked(f.ckpt, f.adapter, f.merge_adapter)
  except loading.LoadError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  settings = settings_from_flags(f.model_name or os.path.basename(os.path.normpath(f.ckpt)))
  server.serve_forever(chat_model, settings, host=f.host, port=f.port, ui=ui)


def main(argv):
  del argv
  run(flags.FLAGS.ui)


if __name__ == "__main__":
  define_flags()
  app.run(errors.one_line(main))
