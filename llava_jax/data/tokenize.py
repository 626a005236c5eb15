"""The one prompt builder's token half: a rendered prompt → input_ids and labels, in one pass.

`conversation.render` gives the whole prompt as one string with character spans of supervised
text; `PromptTokenizer.encode` tokenizes that string once (`add_special_tokens=False`: BOS, EOS
and `<image>` are in the text and read as the tokenizer's special tokens) with the fast
tokenizer's offset mapping, and a token is supervised when its first character lies in a
supervised span. So the ids are exactly the tokenization of the prompt text, for any tokenizer:
what LLaVA's `tokenizer_image_token` gives on the legacy LLaMA tokenizer it trained with, what
our inference builds, and what the exported chat template gives in transformers. Each `<image>`
id then becomes `num_image_tokens` copies of `image_token_id`. Labels are the token ids where
supervised, IGNORE (-100) elsewhere, aligned with input_ids (the train step shifts them).

Truncation keeps whole rounds: the sample is cut after the last complete answer that fits in
`max_len`, so image tokens are never split; a sample with no supervised token left raises
`SampleDropped` (the pipeline counts it).
"""

import dataclasses
import os

import numpy as np
import transformers

from llava_jax.data import conversation

IGNORE = -100


class SampleDropped(ValueError):
  """The sample has no supervised token within max_len (or at all)."""


class TokenizerError(ValueError):
  """A tokenizer the prompt builder cannot use (no offsets, no `<image>` token, ...)."""


@dataclasses.dataclass(frozen=True)
class Encoded:
  input_ids: np.ndarray   # int32[n]
  labels: np.ndarray      # int32[n], IGNORE where not supervised
  num_images: int         # images whose tokens survived truncation
  rounds_dropped: int     # rounds cut by truncation
  rendered: conversation.Rendered | None = None   # the prompt text it was tokenized from


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """The HF tokenizer saved in directory `path` (tokenizer.json + config files)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
  return transformers.AutoTokenizer.from_pretrained(path)


def pad_id(tokenizer) -> int:
  """Pad id: the tokenizer's pad token, else its unk token (as LLaVA does for LLaMA)."""
  for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id):
    if tid is not None:
      return int(tid)
  raise ValueError("tokenizer has neither a pad nor an unk token to pad with")


def _name(tokenizer) -> str:
  return f"{type(tokenizer).__name__}({getattr(tokenizer, 'name_or_path', '') or 'in memory'})"


class PromptTokenizer:
  """Tokenizes rendered prompts for one tokenizer and image-token layout."""

  def __init__(self, tokenizer, *, image_token_id: int, num_image_tokens: int):
    if not getattr(tokenizer, "is_fast", False):
      raise TokenizerError(
          f"tokenizer {_name(tokenizer)} cannot give character offsets (not a fast tokenizer); "
          "the prompt builder needs them to label tokens: save it as tokenizer.json "
          "(transformers' PreTrainedTokenizerFast)")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
      raise TokenizerError(f"tokenizer {_name(tokenizer)} needs BOS and EOS tokens")
    marker = tokenizer.encode(conversation.IMAGE_MARKER, add_special_tokens=False)
    if len(marker) != 1 or marker[0] == tokenizer.unk_token_id:
      raise TokenizerError(f"tokenizer {_name(tokenizer)} has no {conversation.IMAGE_MARKER} "
                           "token (convert from-hf adds it)")
    if marker[0] != image_token_id:
      raise TokenizerError(f"tokenizer maps {conversation.IMAGE_MARKER} to {marker[0]} but the "
                           f"model expects image_token_id={image_token_id}")
    self.tokenizer = tokenizer
    self.image_token_id = image_token_id
    self.num_image_tokens = num_image_tokens
    self.pad_id = pad_id(tokenizer)
    self.bos, self.eos = tokenizer.bos_token, tokenizer.eos_token

  def render(self, template: str, turns, **kwargs) -> conversation.Rendered:
    """conversation.render with this tokenizer's BOS / EOS strings."""
    return conversation.render(template, turns, bos=self.bos, eos=self.eos, **kwargs)

  def tokens(self, rendered: conversation.Rendered):
    """(ids int64[t], supervised bool[t], start char int64[t]) of one tokenization, unexpanded."""
    out = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(out["input_ids"], np.int64)
    starts = np.asarray(out["offset_mapping"], np.int64).reshape(-1, 2)[:, 0]
    supervised = np.zeros(len(ids), bool)
    for start, end in rendered.supervised:
      supervised |= (starts >= start) & (starts < end)
    return ids, supervised, starts

  def encode(self, rendered: conversation.Rendered, max_len: int | None = None) -> Encoded:
    """Image-expanded ids and labels, keeping as many leading rounds as fit in max_len."""
    ids, supervised, starts = self.tokens(rendered)
    is_image = ids == self.image_token_id
    if is_image.sum() != rendered.text.count(conversation.IMAGE_MARKER):
      raise TokenizerError(f"tokenizer {_name(self.tokenizer)} did not read every "
                           f"{conversation.IMAGE_MARKER} as one token")
    expanded_len = np.cumsum(np.where(is_image, self.num_image_tokens, 1))
    # Tokens per kept round count: every round ends right after a special token (EOS or the
    # prompt's end), so no token straddles a cut.
    ends = [int(np.searchsorted(starts, end)) for end in rendered.round_ends]
    kept = len(ends)
    if max_len is not None:
      kept = sum(1 for n in ends if n == 0 or expanded_len[n - 1] <= max_len)
    if kept == 0:
      raise SampleDropped(f"too long: the first round alone needs "
                          f"{int(expanded_len[ends[0] - 1])} tokens > max_len={max_len}")
    n = ends[kept - 1]
    ids, supervised, is_image = ids[:n], supervised[:n], is_image[:n]
    if not supervised.any() and rendered.supervised:
      raise SampleDropped("no supervised token")
    repeats = np.where(is_image, self.num_image_tokens, 1)
    input_ids = np.repeat(np.where(is_image, self.image_token_id, ids), repeats).astype(np.int32)
    labels = np.repeat(np.where(supervised & ~is_image, ids, IGNORE), repeats).astype(np.int32)
    return Encoded(input_ids, labels, int(is_image.sum()), len(ends) - kept, rendered)

  def encode_prompt(self, rendered: conversation.Rendered) -> np.ndarray:
    """int32[n] ids of a generation prompt (render(..., generation=True)), images expanded."""
    return self.encode(rendered).input_ids


def pad_to(encoded: Encoded, max_len: int, pad: int) -> dict[str, np.ndarray]:
  """input_ids/labels/segment_ids/positions, int32[max_len] each (one sample per row)."""
  n = len(encoded.input_ids)
  if n > max_len:
    raise ValueError(f"sample of {n} tokens does not fit max_len={max_len}")
  input_ids = np.full(max_len, pad, np.int32)
  labels = np.full(max_len, IGNORE, np.int32)
  segment_ids = np.zeros(max_len, np.int32)
  positions = np.zeros(max_len, np.int32)
  input_ids[:n] = encoded.input_ids
  labels[:n] = encoded.labels
  segment_ids[:n] = 1
  positions[:n] = np.arange(n, dtype=np.int32)
  return dict(input_ids=input_ids, labels=labels, segment_ids=segment_ids, positions=positions)
