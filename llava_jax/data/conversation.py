"""Chat templates: a LLaVA conversation → rounds of prompt segments with roles.

A template turns `[(role, text), ...]` (roles "human"/"gpt", text may hold `<image>` markers)
into rounds. A round is one user turn plus its answer, as a tuple of `Segment`s; truncation
cuts only between rounds. Each segment is text or one special token ("bos", "eos", "image"),
and says whether it is supervised (answer text and the token that closes the answer).

The strings are LLaVA's (haotian-liu/LLaVA `llava/conversation.py`), character for character:
joining the segments with `<s>`, `</s>`, `<image>` for the specials gives LLaVA's
`Conversation.get_prompt()` output, with BOS in front as its tokenizer adds it:
  plain      `<image>` + caption + "\n"    (`conv_llava_plain`; the human text is dropped, as in
             LLaVA's `preprocess_plain`; supervised: caption and the "\n" separator)
  vicuna_v1  "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>"    (`conv_vicuna_v1`;
             supervised: " a" and </s>)
  llama_2    "[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>"
             (`conv_llava_llama_2`, the LLaVA-LLaMA-2 system prompt; supervised: " a " and </s>)

Text segments keep their separators at the front (" USER:", " a"), so the tokenizer's
word boundaries fall on segment boundaries; see tokenize.py for how each is encoded.
"""

import dataclasses
import random
from typing import Literal, Sequence

IMAGE_MARKER = "<image>"
HUMAN, GPT = "human", "gpt"
TEMPLATES = ("plain", "vicuna_v1", "llama_2")

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.")

Kind = Literal["text", "bos", "eos", "image"]


class TemplateError(ValueError):
  """A conversation the template cannot render (wrong roles or turn count)."""


@dataclasses.dataclass(frozen=True)
class Segment:
  kind: Kind
  text: str = ""          # only for kind == "text"
  supervised: bool = False


Round = tuple[Segment, ...]


def _unsup(text: str) -> list[Segment]:
  """Unsupervised text with `<image>` markers split out into image segments."""
  out = []
  for i, piece in enumerate(text.split(IMAGE_MARKER)):
    if i:
      out.append(Segment("image"))
    if piece:
      out.append(Segment("text", piece))
  return out


def _answer(text: str) -> list[Segment]:
  if IMAGE_MARKER in text:
    raise TemplateError(f"{IMAGE_MARKER} inside an answer is not supported")
  return [Segment("text", text, supervised=True)]


def _pairs(turns: Sequence[tuple[str, str]], generation: bool) -> list[tuple[str, str | None]]:
  """[(question, answer)], checking roles alternate human/gpt starting with human."""
  for i, (role, _) in enumerate(turns):
    if role not in (HUMAN, GPT):
      raise TemplateError(f"turn {i}: unknown role {role!r} (expected 'human' or 'gpt')")
    if role != (HUMAN, GPT)[i % 2]:
      raise TemplateError(f"turn {i}: roles must alternate human/gpt starting with human")
  if not turns:
    raise TemplateError("no turns")
  if generation != (len(turns) % 2 == 1):
    raise TemplateError("a generation prompt ends with a human turn; training data with a gpt turn")
  texts = [t for _, t in turns] + ([None] if generation else [])
  return list(zip(texts[0::2], texts[1::2]))


def _merge(segments: list[Segment]) -> Round:
  """Joins neighbouring text segments with the same supervision (tokenized as one piece)."""
  out: list[Segment] = []
  for s in segments:
    if out and s.kind == "text" and out[-1].kind == "text" and out[-1].supervised == s.supervised:
      out[-1] = Segment("text", out[-1].text + s.text, s.supervised)
    else:
      out.append(s)
  return tuple(out)


def render(template: str, turns: Sequence[tuple[str, str]], *,
           generation: bool = False) -> list[Round]:
  """Rounds of segments for `turns`; `generation=True` leaves the last answer open.

  Args:
    template: one of TEMPLATES.
    turns: [(role, text)] alternating human/gpt, starting with human; text may hold `<image>`.
    generation: the turns end with a human turn and the prompt ends where the model answers.
  """
  pairs = _pairs(turns, generation)
  rounds = []
  if template == "plain":
    if len(pairs) != 1 or IMAGE_MARKER not in pairs[0][0]:
      raise TemplateError("plain template needs one human turn with <image> and one answer")
    images = [Segment("image")] * pairs[0][0].count(IMAGE_MARKER)
    answer = [] if generation else _answer(pairs[0][1] + "\n")
    rounds.append(_merge([Segment("bos"), *images, *answer]))
  elif template == "vicuna_v1":
    for i, (question, answer) in enumerate(pairs):
      head = [Segment("bos"), *_unsup(VICUNA_V1_SYSTEM + " ")] if i == 0 else []
      segs = head + _unsup("USER: " + question + " ASSISTANT:")
      if answer is not None:
        segs += _answer(" " + answer) + [Segment("eos", supervised=True)]
      rounds.append(_merge(segs))
  elif template == "llama_2":
    for i, (question, answer) in enumerate(pairs):
      system = f"<<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n" if i == 0 else ""
      segs = [Segment("bos"), *_unsup(f"[INST] {system}{question} [/INST]")]
      if answer is not None:
        segs += _answer(" " + answer + " ") + [Segment("eos", supervised=True)]
      rounds.append(_merge(segs))
  else:
    raise TemplateError(f"unknown template {template!r}; expected one of {TEMPLATES}")
  return rounds


def prompt_text(rounds: Sequence[Round], bos: str = "<s>", eos: str = "</s>",
                image: str = IMAGE_MARKER) -> str:
  """The rounds as one string (LLaVA's get_prompt(), with the BOS its tokenizer adds)."""
  special = {"bos": bos, "eos": eos, "image": image}
  return "".join(s.text if s.kind == "text" else special[s.kind] for r in rounds for s in r)


def place_first_image(turns: Sequence[tuple[str, str]],
                      where: Literal["before", "after"]) -> list[tuple[str, str]]:
  """Moves the first turn's single `<image>` before ("<image>\\nq") or after ("q\\n<image>") q.

  LLaVA's paper randomizes this placement during instruction tuning; turns whose first
  message has no or several images are returned unchanged.
  """
  turns = list(turns)
  if not turns or turns[0][1].count(IMAGE_MARKER) != 1:
    return turns
  role, text = turns[0]
  question = text.replace(IMAGE_MARKER, "").strip()
  text = f"{IMAGE_MARKER}\n{question}" if where == "before" else f"{question}\n{IMAGE_MARKER}"
  turns[0] = (role, text)
  return turns


def random_image_position(turns: Sequence[tuple[str, str]], rng: random.Random):
  """place_first_image with before/after drawn from `rng` (seeded by the caller)."""
  return place_first_image(turns, rng.choice(("before", "after")))


def add_missing_image_markers(turns: Sequence[tuple[str, str]], num_images: int):
  """Prepends `<image>\\n` to the first turn for images the text does not mention.

  LLaVA trains on such records without the image; we show it to the model instead.
  Returns (turns, how many markers were added).
  """
  turns = list(turns)
  present = sum(t.count(IMAGE_MARKER) for _, t in turns)
  missing = max(0, num_images - present)
  if missing and turns:
    role, text = turns[0]
    turns[0] = (role, f"{IMAGE_MARKER}\n" * missing + text)
  return turns, missing
