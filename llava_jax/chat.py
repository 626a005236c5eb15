r"""Chat about an image from the terminal.

  python -m llava_jax.chat --ckpt=DIR --image=PATH --prompt="What is in the image?"  # one answer
  python -m llava_jax.chat --ckpt=DIR --image=PATH                                   # interactive

Interactive commands: `/image PATH` switches image (and starts a new conversation), `/reset`
forgets the conversation, `/quit` (or end of input) leaves. Answers stream as they are decoded.
`--ckpt` takes anything `llava_jax.load` does: a model directory, a training workdir or a
llava-hf directory.
"""

from collections.abc import Callable
import os
import sys

from absl import app
from absl import flags
from absl import logging

from llava_jax import errors
from llava_jax import quiet

quiet.install()   # before prompting imports transformers

from llava_jax.infer import loading  # noqa: E402
from llava_jax.infer import prompting  # noqa: E402

_HELP = "commands: /image PATH  (new image, new conversation)   /reset   /quit"


class ChatError(Exception):
  """A problem the user can fix (bad path, prompt too long); printed without a traceback."""


def read_image(path: str) -> bytes:
  """The encoded bytes of a local image (`file://` URLs accepted), checked to decode."""
  path = path.strip().removeprefix("file://")
  if not os.path.isfile(path):
    raise ChatError(f"image not found: {path}")
  try:
    with open(path, "rb") as f:
      data = f.read()
    prompting.decode_image(data)
  except (OSError, prompting.PromptError) as e:
    raise ChatError(f"cannot read image {path}: {e}") from None
  return data


class Session:
  """One conversation about one image; `ask` streams the answer and remembers the turn."""

  def __init__(self, model, image: bytes | None, generation: dict):
    self.model = model
    self.image = image
    self.generation = generation
    self.history: list[tuple[str, str]] = []

  def ask(self, question: str, write: Callable[[str], None]) -> str:
    try:
      pieces = self.model.chat(self.image, question, history=self.history, stream=True,
                               **self.generation)
      answer = []
      for piece in pieces:
        answer.append(piece)
        write(piece)
    except prompting.PromptError as e:
      raise ChatError(str(e)) from None
    text = "".join(answer)
    self.history.append((question, text))
    return text


def interact(session: Session, read_line: Callable[[str], str], write: Callable[[str], None]):
  """The interactive loop; `read_line` raises EOFError at end of input."""
  write(_HELP + "\n")
  while True:
    try:
      line = read_line("USER: ").strip()
    except (EOFError, KeyboardInterrupt):
      write("\n")
      return
    if not line:
      continue
    if line in ("/quit", "/exit"):
      return
    if line == "/reset":
      session.history.clear()
      write("(conversation reset)\n")
      continue
    if line.startswith("/image"):
      try:
        session.image = read_image(line.removeprefix("/image"))
        session.history.clear()
        write("(new image; conversation reset)\n")
      except ChatError as e:
        write(f"error: {e}\n")
      continue
    if line.startswith("/"):
      write(f"unknown command {line.split()[0]}; {_HELP}\n")
      continue
    write("ASSISTANT: ")
    try:
      session.ask(line, write)
      write("\n")
    except ChatError as e:
      write(f"\nerror: {e}\n")


def define_flags():
  """Flags exist only when this module is the program (serve and tests import it too)."""
  flags.DEFINE_string("ckpt", None, "Model directory, training workdir or llava-hf dir.")
  flags.DEFINE_string("adapter", None, "LoRA adapters for --ckpt: a PEFT or LLaVA LoRA dir, or a LoRA workdir.")
  flags.DEFINE_bool("merge_adapter", True, "Fold --adapter into the base weights on load; "
                    "--nomerge_adapter applies it on the fly (a QLoRA base stays quantized).")
  flags.DEFINE_string("image", None, "Local image file (path or file:// URL).")
  flags.DEFINE_string("prompt", None, "Ask this once, print the answer and exit.")
  flags.DEFINE_integer("max_new_tokens", 256, "Most tokens per answer.")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("system", None, "System prompt replacing the one the model was trained "
                      "with (vicuna_v1's opening sentence, llama_2's <<SYS>> block).")


def _write(text: str):
  sys.stdout.write(text)
  sys.stdout.flush()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax's restore chatter would bury the conversation.
  f = flags.FLAGS
  try:
    image = read_image(f.image) if f.image else None
    model = loading.load_checked(f.ckpt, f.adapter, f.merge_adapter)
    session = Session(model, image, dict(max_new_tokens=f.max_new_tokens,
                                         temperature=f.temperature, top_p=f.top_p, seed=f.seed,
                                         system=f.system))
    if f.prompt is not None:
      session.ask(f.prompt, _write)
      _write("\n")
      return
  except (ChatError, loading.LoadError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  interact(session, input, _write)


if __name__ == "__main__":
  define_flags()
  app.run(errors.one_line(main))
