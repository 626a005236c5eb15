"""The one prompt builder's text half: a LLaVA conversation → the prompt string + supervised spans.

`render(template, turns)` returns the whole prompt as one string (special tokens written as
their strings) and the character spans that are trained on; `tokenize.py` tokenizes that string
once and takes the labels from the spans. Training, `llava_jax.load`/chat/serve/evaluate and the
chat template that `convert to-hf` exports all go through here, so they see the same prompt.

The strings are LLaVA's (haotian-liu/LLaVA `llava/conversation.py` `get_prompt()`), with the
BOS its tokenizer adds written in front:
  plain      "<s>" + "<image>" + caption + "\\n"       (the question is dropped, as in LLaVA's
             `preprocess_plain`; supervised: caption + "\\n")
  vicuna_v1  "<s>SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>"   (supervised:
             " a</s>", from the separating space, as LLaVA's length arithmetic masks)
  llama_2    "<s>[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>"
             (supervised: " a </s>")
A system message replaces SYSTEM (vicuna_v1's opening sentence, llama_2's <<SYS>> block; an
empty one drops the block, as LLaVA's `wrap_sys`). `plain` has no system prompt.

Image placement (`place_images`, `data.image_placement`):
  front      LLaVA's `preprocess_multimodal`: in each human turn with `<image>`, the markers are
             removed, the text stripped, and "<image>\\n" put in front (then stripped again, so an
             image-only turn is "<image>");
  as_written the record's text unchanged;
  random     the paper's augmentation: per record (seeded by the caller), front or after the
             text ("q\\n<image>").
A leading gpt turn is dropped (`drop_leading_gpt`), as LLaVA's preprocess does.
"""

from collections.abc import Sequence
import dataclasses
import random

IMAGE_MARKER = "<image>"
HUMAN, GPT = "human", "gpt"
TEMPLATES = ("plain", "vicuna_v1", "llama_2")
PLACEMENTS = ("front", "as_written", "random")

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.")
DEFAULT_SYSTEM = {"plain": "", "vicuna_v1": VICUNA_V1_SYSTEM, "llama_2": LLAVA_LLAMA_2_SYSTEM}
# Text inside an answer at which LLaVA's masking splits a round (it then masks the whole sample).
ROUND_SEPARATORS = {"plain": (), "vicuna_v1": (" ASSISTANT: ",), "llama_2": ("[/INST] ",)}


class TemplateError(ValueError):
  """A conversation the template cannot render (wrong roles or turn count)."""


@dataclasses.dataclass(frozen=True)
class Rendered:
  """A prompt as one string, with what is trained on and where truncation may cut."""
  text: str
  supervised: tuple[tuple[int, int], ...]   # [start, end) character spans
  round_ends: tuple[int, ...]               # character offset after each round (cut points)

  def supervised_text(self) -> list[str]:
    return [self.text[s:e] for s, e in self.supervised]


class _Builder:
  def __init__(self):
    self.text, self.spans, self.round_ends = "", [], []

  def add(self, text: str, supervised: bool = False):
    if supervised and text:
      self.spans.append((len(self.text), len(self.text) + len(text)))
    self.text += text

  def end_round(self):
    self.round_ends.append(len(self.text))

  def result(self) -> Rendered:
    if not self.round_ends or self.round_ends[-1] != len(self.text):
      self.end_round()
    return Rendered(self.text, tuple(self.spans), tuple(self.round_ends))


def _pairs(turns: Sequence[tuple[str, str]], generation: bool) -> list[tuple[str, str | None]]:
  """[(question, answer)], checking roles alternate human/gpt starting with human."""
  for i, (role, text) in enumerate(turns):
    if role not in (HUMAN, GPT):
      raise TemplateError(f"turn {i}: unknown role {role!r} (expected 'human' or 'gpt')")
    if role != (HUMAN, GPT)[i % 2]:
      raise TemplateError(f"turn {i}: roles must alternate human/gpt starting with human")
    if role == GPT and IMAGE_MARKER in text:
      raise TemplateError(f"turn {i}: {IMAGE_MARKER} inside an answer is not supported")
  if not turns:
    raise TemplateError("no turns")
  if generation != (len(turns) % 2 == 1):
    raise TemplateError("a generation prompt ends with a human turn; training data with a gpt turn")
  texts = [t for _, t in turns] + ([None] if generation else [])
  return list(zip(texts[0::2], texts[1::2]))


def render(template: str, turns: Sequence[tuple[str, str]], *, generation: bool = False,
           system: str | None = None, bos: str = "<s>", eos: str = "</s>") -> Rendered:
  """The prompt of `turns`; `generation=True` ends it where the model answers.

  Args:
    template: one of TEMPLATES.
    turns: [(role, text)] alternating human/gpt from human; text may hold `<image>` (placed
      already: see place_images).
    generation: the turns end with a human turn and the prompt ends where the answer starts.
    system: replaces the template's system prompt (None: the template's own).
    bos, eos: the tokenizer's BOS / EOS strings.
  """
  pairs = _pairs(turns, generation)
  if template not in TEMPLATES:
    raise TemplateError(f"unknown template {template!r}; expected one of {TEMPLATES}")
  system = DEFAULT_SYSTEM[template] if system is None else system
  out = _Builder()
  if template == "plain":
    if len(pairs) != 1 or IMAGE_MARKER not in pairs[0][0]:
      raise TemplateError("plain template needs one human turn with <image> and one answer")
    out.add(bos + IMAGE_MARKER * pairs[0][0].count(IMAGE_MARKER))
    if not generation:
      out.add(pairs[0][1] + "\n", supervised=True)
  elif template == "vicuna_v1":
    out.add(bos + system + " ")
    for question, answer in pairs:
      out.add(f"USER: {question} ASSISTANT:")
      if answer is not None:
        out.add(f" {answer}{eos}", supervised=True)
        out.end_round()
  else:  # llama_2
    for i, (question, answer) in enumerate(pairs):
      block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if i == 0 and system else ""
      out.add(f"{bos}[INST] {block}{question} [/INST]")
      if answer is not None:
        out.add(f" {answer} {eos}", supervised=True)
        out.end_round()
  return out.result()


def _image_first(text: str) -> str:
  count = text.count(IMAGE_MARKER)
  return (f"{IMAGE_MARKER}\n" * count + text.replace(IMAGE_MARKER, "").strip()).strip()


def _image_last(text: str) -> str:
  count = text.count(IMAGE_MARKER)
  return (text.replace(IMAGE_MARKER, "").strip() + f"\n{IMAGE_MARKER}" * count).strip()


def place_images(turns: Sequence[tuple[str, str]], placement: str,
                 rng: random.Random | None = None) -> list[tuple[str, str]]:
  """Moves the `<image>` markers of each human turn by `placement` (see the module docstring).

  `rng` draws front/after for "random" (once per record: seed it by record, so a resumed run
  draws the same).
  """
  if placement not in PLACEMENTS:
    raise ValueError(f"image placement {placement!r}; expected one of {PLACEMENTS}")
  if placement == "as_written":
    return list(turns)
  move = _image_first
  if placement == "random":
    if rng is None:
      raise ValueError("image placement 'random' needs an rng seeded per record")
    move = rng.choice((_image_first, _image_last))
  return [(role, move(text) if role == HUMAN and IMAGE_MARKER in text else text)
          for role, text in turns]


def record_rng(seed: int, index: int) -> random.Random:
  """The per-sample generator for placement 'random': `index` is the sample's position in the
  stream (pipeline.SampleBuilder), so a resumed iterator draws the same."""
  return random.Random(f"{seed}:{index}")


def drop_leading_gpt(turns: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
  """LLaVA drops a conversation's first turn when it is gpt's; returns (turns, dropped)."""
  turns = list(turns)
  if turns and turns[0][0] == GPT:
    return turns[1:], True
  return turns, False


def answer_problems(turns: Sequence[tuple[str, str]], template: str | None,
                    specials: Sequence[str] = ("<s>", "</s>")) -> list[tuple[int, str]]:
  """[(turn index, message)] for answers holding a special token's text or a round separator.

  We train on them as written (the tokenizer reads a literal "</s>" as EOS); LLaVA's length
  arithmetic would mask the whole sample. `template=None` checks every template's separators.
  """
  seps = (ROUND_SEPARATORS[template] if template else
          tuple(s for t in TEMPLATES for s in ROUND_SEPARATORS[t]))
  found = []
  for i, (role, text) in enumerate(turns):
    if role != GPT:
      continue
    hits = [s for s in (*specials, *seps) if s in text]
    if hits:
      found.append((i, "answer contains " + ", ".join(repr(h) for h in hits)))
  return found


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


def training_turns(turns: Sequence[tuple[str, str]], *, num_images: int, placement: str,
                   rng: random.Random | None = None) -> list[tuple[str, str]]:
  """A record's turns as the template takes them (records.check_record notes the repairs).

  LLaVA's order: a leading gpt turn is dropped, then images are placed; an image the text does
  not mention gets `<image>\\n` in front (LLaVA would train without it).
  """
  turns, _ = drop_leading_gpt(turns)
  turns, _ = add_missing_image_markers(turns, num_images)
  return place_images(turns, placement, rng)
