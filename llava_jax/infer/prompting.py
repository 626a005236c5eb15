"""Chat messages with images → the model's prompt ids and pixels (chat, serve, evaluate, load).

A message is a role ("system" | "user" | "assistant") and a list of parts in reading order:
text, or an image (encoded bytes or uint8[H, W, 3]). A user message's parts are joined with
"\\n", each image written as `<image>` where it appears, and then placed by the model's image
placement rule exactly as in training ("front": "<image>\\n" + the stripped text, so text sent
before the image reads as LLaVA trained on; "random" places as "front", LLaVA's inference
layout). System messages (joined with "\\n") replace the template's system prompt. The prompt is
then built by the same `data.conversation` + `data.tokenize` builder as training prompts.

The template, placement and system prompt a model was trained with (`PromptSettings`) travel
with it: `prompt.json` in model directories and exports, the training config in workdirs.
"""

from collections.abc import Sequence
import dataclasses
import json
import pathlib

import numpy as np

from llava_jax.config import schema
from llava_jax.data import conversation
from llava_jax.data import image as image_lib
from llava_jax.data import tokenize

ROLES = {"user": conversation.HUMAN, "assistant": conversation.GPT}
SETTINGS_FILE = "prompt.json"


class PromptError(ValueError):
  """A conversation that cannot become a prompt (bad roles, unreadable image, too long)."""


@dataclasses.dataclass
class Message:
  role: str                                      # "system" | "user" | "assistant"
  parts: list[str | bytes | np.ndarray]          # text, encoded image, or uint8[H, W, 3]


@dataclasses.dataclass(frozen=True)
class PromptSettings:
  """How a model's prompts are built: what it was trained with."""
  template: str
  image_placement: str
  system_prompt: str      # the template's system prompt as trained (a system message replaces it)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"


def settings_from_data_config(data_cfg) -> PromptSettings:
  """The settings of a training config's `data` part; fields it lacks (older workdirs) take the
  schema's defaults."""
  defaults = schema.data_config()
  get = lambda key: data_cfg[key] if key in data_cfg else defaults[key]
  template, system = get("template"), get("system_prompt")
  return PromptSettings(template, get("image_placement"),
                        conversation.DEFAULT_SYSTEM[template] if system is None else system)


def default_settings() -> PromptSettings:
  """What a model without stored settings gets: the schema's defaults (vicuna_v1, front)."""
  return settings_from_data_config(schema.data_config())


def write_settings(directory, settings: PromptSettings) -> None:
  (pathlib.Path(directory) / SETTINGS_FILE).write_text(settings.to_json())


def read_settings(directory) -> PromptSettings | None:
  """The settings stored in `directory`, or None when it has none; ValueError naming the file."""
  path = pathlib.Path(directory) / SETTINGS_FILE
  if not path.is_file():
    return None
  data = json.loads(path.read_text())
  try:
    settings = PromptSettings(**data)
  except TypeError as e:
    raise ValueError(f"{path}: expected keys template, image_placement, system_prompt: "
                     f"{e}") from None
  if settings.template not in conversation.TEMPLATES:
    raise ValueError(f"{path}: template {settings.template!r}; expected one of "
                     f"{conversation.TEMPLATES}")
  if settings.image_placement not in conversation.PLACEMENTS:
    raise ValueError(f"{path}: image_placement {settings.image_placement!r}; expected one of "
                     f"{conversation.PLACEMENTS}")
  return settings


def inference_placement(placement: str) -> str:
  """'random' trained both orders; inference uses LLaVA's own layout, image first."""
  return "front" if placement == "random" else placement


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
  """uint8[H, W, 3] from encoded bytes; PromptError if they are not a readable image."""
  try:
    return image_lib.decode_image(data, name=name)
  except image_lib.ImageError as e:
    raise PromptError(str(e)) from None


def to_turns(messages: Sequence[Message], placement: str = "front"):
  """(template turns with `<image>` markers, images in marker order, system text or None)."""
  turns, images, system = [], [], None
  for i, message in enumerate(messages):
    if message.role == "system":
      if not all(isinstance(p, str) for p in message.parts):
        raise PromptError(f"message {i}: a system message holds text only")
      text = "\n".join(message.parts)
      system = text if system is None else f"{system}\n{text}"
      continue
    if message.role not in ROLES:
      raise PromptError(f"message {i}: unknown role {message.role!r}")
    pieces = []
    for part in message.parts:
      if isinstance(part, str):
        pieces.append(part)
        continue
      if message.role != "user":
        raise PromptError(f"message {i}: only user messages may hold images")
      image = decode_image(part, f"message {i} image") if isinstance(part, bytes) else part
      images.append(np.asarray(image))
      pieces.append(conversation.IMAGE_MARKER)
    text = "\n".join(pieces)
    turns.append((ROLES[message.role], text.strip() if message.role == "assistant" else text))
  if not turns or turns[-1][0] != conversation.HUMAN:
    raise PromptError("the conversation must end with a user message")
  return conversation.place_images(turns, inference_placement(placement)), images, system


class PromptEncoder:
  """Encodes conversations for one tokenizer, prompt settings and image preprocessing."""

  def __init__(self, tokenizer, *, image_token_id: int, num_image_tokens: int, image_size: int,
               image_aspect: str, context_len: int, settings: PromptSettings | None = None):
    if tokenizer is None:
      raise PromptError("the checkpoint has no tokenizer: chat needs one")
    self.tokens = tokenize.PromptTokenizer(tokenizer, image_token_id=image_token_id,
                                           num_image_tokens=num_image_tokens)
    self.image_size = image_size
    self.image_aspect = image_aspect
    self.context_len = context_len
    self.settings = settings or default_settings()

  def render(self, messages: Sequence[Message]):
    """(conversation.Rendered generation prompt, images)."""
    turns, images, system = to_turns(messages, self.settings.image_placement)
    try:
      rendered = self.tokens.render(
          self.settings.template, turns, generation=True,
          system=self.settings.system_prompt if system is None else system)
    except conversation.TemplateError as e:
      raise PromptError(str(e)) from None
    return rendered, images

  def encode(self, messages: Sequence[Message]) -> tuple[list[int], np.ndarray]:
    """(prompt ids, pixels float32[max(1, images), S, S, 3]); zero pixels when no image."""
    rendered, images = self.render(messages)
    ids = self.tokens.encode_prompt(rendered).tolist()
    if len(ids) >= self.context_len:
      raise PromptError(f"prompt of {len(ids)} tokens is longer than the model's context of "
                        f"{self.context_len} tokens")
    for i, image in enumerate(images):
      try:
        image_lib.check_rgb_uint8(image, f"image {i}")
      except ValueError as e:
        raise PromptError(str(e)) from None
    pixels = image_lib.preprocess_batch(images, self.image_size, self.image_aspect,
                                        max_images=max(1, len(images)))
    return ids, pixels
