"""Chat messages with images → the model's prompt ids and pixels (for chat and serve).

A message is a role and a list of parts in reading order: text, or an image (encoded bytes or
uint8[H, W, 3]). Each image becomes an `<image>` marker where it appears in its message, then
`data.conversation` renders the template (vicuna_v1 by default; its system prompt is fixed, so
system messages are not used) and `data.tokenize` expands every marker to the image's tokens,
exactly as training prompts are built.
"""

from collections.abc import Sequence
import dataclasses

import numpy as np

from llava_jax.data import conversation
from llava_jax.data import image as image_lib
from llava_jax.data import tokenize

ROLES = {"user": conversation.HUMAN, "assistant": conversation.GPT}


class PromptError(ValueError):
  """A conversation that cannot become a prompt (bad roles, unreadable image, too long)."""


@dataclasses.dataclass
class Message:
  role: str                                      # "system" | "user" | "assistant"
  parts: list[str | bytes | np.ndarray]          # text, encoded image, or uint8[H, W, 3]


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
  """uint8[H, W, 3] from encoded bytes; PromptError if they are not a readable image."""
  try:
    return image_lib.decode_image(data, name=name)
  except image_lib.ImageError as e:
    raise PromptError(str(e)) from None


def to_turns(messages: Sequence[Message]) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
  """Template turns with `<image>` markers, and the images in marker order."""
  turns, images = [], []
  for i, message in enumerate(messages):
    if message.role == "system":
      continue
    if message.role not in ROLES:
      raise PromptError(f"message {i}: unknown role {message.role!r}")
    text = ""
    for part in message.parts:
      if isinstance(part, str):
        text += part
        continue
      if message.role != "user":
        raise PromptError(f"message {i}: only user messages may hold images")
      image = decode_image(part, f"message {i} image") if isinstance(part, bytes) else part
      images.append(np.asarray(image))
      # LLaVA's layout: "<image>\nquestion" (or "question\n<image>" for an image after text).
      text = f"{text.rstrip()}\n{conversation.IMAGE_MARKER}" if text.strip() else (
          f"{conversation.IMAGE_MARKER}\n")
    turns.append((ROLES[message.role], text.strip() if message.role == "assistant" else text))
  if not turns or turns[-1][0] != conversation.HUMAN:
    raise PromptError("the conversation must end with a user message")
  return turns, images


class PromptEncoder:
  """Encodes conversations for one tokenizer, template and image preprocessing."""

  def __init__(self, tokenizer, *, image_token_id: int, num_image_tokens: int, image_size: int,
               image_aspect: str, context_len: int, template: str = "vicuna_v1"):
    if tokenizer is None:
      raise PromptError("the checkpoint has no tokenizer: chat needs one")
    self.segments = tokenize.SegmentEncoder(tokenizer, image_token_id=image_token_id,
                                            num_image_tokens=num_image_tokens)
    self.image_size = image_size
    self.image_aspect = image_aspect
    self.context_len = context_len
    self.template = template

  def encode(self, messages: Sequence[Message]) -> tuple[list[int], np.ndarray]:
    """(prompt ids, pixels float32[max(1, images), S, S, 3]); zero pixels when no image."""
    turns, images = to_turns(messages)
    try:
      rounds = conversation.render(self.template, turns, generation=True)
    except conversation.TemplateError as e:
      raise PromptError(str(e)) from None
    ids = self.segments.encode_prompt(rounds).tolist()
    if len(ids) >= self.context_len:
      raise PromptError(f"prompt of {len(ids)} tokens is longer than the model's context of "
                        f"{self.context_len} tokens")
    for i, image in enumerate(images):
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise PromptError(f"image {i}: expected uint8[H, W, 3], got {image.dtype}"
                          f"{list(image.shape)}")
    pixels = image_lib.preprocess_batch(images, self.image_size, self.image_aspect,
                                        max_images=max(1, len(images)))
    return ids, pixels
