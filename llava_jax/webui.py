r"""LLaVA's Gradio web demo, with the OpenAI API on the same worker.

  python -m llava_jax.webui --ckpt=DIR [--port=7860]

Takes every flag of `llava_jax.serve` (it is `serve --ui`). The page is at http://HOST:PORT/.
"""

from absl import app
from absl import flags

from llava_jax import errors
from llava_jax import serve


def define_flags():
  serve.define_flags()  # same flags as the server


def main(argv):
  del argv
  serve.run(ui=True)


if __name__ == "__main__":
  define_flags()
  flags.FLAGS.set_default("port", 7860)
  app.run(errors.one_line(main))
