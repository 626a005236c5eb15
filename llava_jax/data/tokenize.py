"""Rounds of prompt segments → input_ids and labels, segment by segment.

Every segment is tokenized on its own and labelled by its role, so a label can never drift
from its token (LLaVA's `preprocess_v1` instead re-tokenizes the whole prompt and masks by
length arithmetic, which silently masks whole samples on a "tokenization mismatch").

How a text segment is encoded (`add_special_tokens=False`):
  * after a special token (BOS, EOS, image) or at the start: `encode(text)` — the tokenizer's
    own behaviour at the start of a text run. For a LLaMA (SentencePiece-style) tokenizer that
    adds the "▁" dummy prefix, as LLaMA's legacy tokenizer (the one LLaVA trained with) does
    after special tokens and LLaVA's `tokenizer_image_token` does after `<image>`.
  * continuing text (the answer after "ASSISTANT:"): the template puts the separating space
    at the segment's front; a dummy-prefix tokenizer gets `encode(text[1:])`, whose "▁"
    stands for that space, so "ASSISTANT:" + " a" tokenizes as "ASSISTANT:▁a" does. Tokenizers
    without a dummy prefix (byte-level BPE) get `encode(text)`.
Special tokens are inserted by id; each image becomes `num_image_tokens` copies of
`image_token_id`. Labels are the token ids where supervised, IGNORE (-100) elsewhere, aligned
with input_ids (the train step shifts them).

Truncation keeps whole rounds: the sample is cut after the last complete answer that fits in
`max_len`, so image tokens are never split; a sample with no supervised token left raises
`SampleDropped` (the pipeline counts it).
"""

import dataclasses
import os
from typing import Sequence

import numpy as np
import transformers

from llava_jax.data import conversation

IGNORE = -100


class SampleDropped(ValueError):
  """The sample has no supervised token within max_len (or at all)."""


@dataclasses.dataclass(frozen=True)
class Encoded:
  input_ids: np.ndarray   # int32[n]
  labels: np.ndarray      # int32[n], IGNORE where not supervised
  num_images: int         # images whose tokens survived truncation
  rounds_dropped: int     # rounds cut by truncation


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


class SegmentEncoder:
  """Encodes rounds of `conversation.Segment`s for one tokenizer and image-token layout."""

  def __init__(self, tokenizer, *, image_token_id: int, num_image_tokens: int):
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
      raise ValueError("tokenizer needs BOS and EOS tokens")
    marker_id = tokenizer.convert_tokens_to_ids(conversation.IMAGE_MARKER)
    if marker_id not in (None, tokenizer.unk_token_id) and marker_id != image_token_id:
      raise ValueError(f"tokenizer maps {conversation.IMAGE_MARKER} to {marker_id} but the model "
                       f"expects image_token_id={image_token_id}")
    self.tokenizer = tokenizer
    self.image_token_id = image_token_id
    self.num_image_tokens = num_image_tokens
    self.pad_id = pad_id(tokenizer)
    first = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False))[0]
    self.dummy_prefix = first.startswith("\u2581")   # "▁": SentencePiece-style word start
    self._special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}

  def encode_text(self, text: str, run_start: bool) -> list[int]:
    if not run_start and self.dummy_prefix and text.startswith(" "):
      text = text[1:]
    if not text:
      return []
    return self.tokenizer.encode(text, add_special_tokens=False)

  def encode_round(self, segments: conversation.Round,
                   run_start: bool = True) -> tuple[list[int], list[int], int]:
    """(ids, labels, images) of one round; `run_start`: the previous token was special."""
    ids, labels, images = [], [], 0
    for seg in segments:
      if seg.kind == "text":
        new = self.encode_text(seg.text, run_start)
        run_start = False
      elif seg.kind == "image":
        new = [self.image_token_id] * self.num_image_tokens
        images += 1
        run_start = True
      else:
        new = [self._special[seg.kind]]
        run_start = True
      ids += new
      labels += new if seg.supervised else [IGNORE] * len(new)
    return ids, labels, images

  def encode(self, rounds: Sequence[conversation.Round], max_len: int | None = None) -> Encoded:
    """Encodes whole rounds, keeping as many leading rounds as fit in max_len."""
    ids, labels, images, kept = [], [], 0, 0
    for i, rnd in enumerate(rounds):
      r_ids, r_labels, r_images = self.encode_round(rnd, _starts_run(rounds, i))
      if max_len is not None and len(ids) + len(r_ids) > max_len:
        break
      ids += r_ids
      labels += r_labels
      images += r_images
      kept += 1
    if kept == 0:
      need = len(self.encode_round(rounds[0])[0]) if rounds else 0
      raise SampleDropped(f"too long: the first round alone needs {need} tokens > "
                          f"max_len={max_len}")
    if all(l == IGNORE for l in labels):
      raise SampleDropped("no supervised token")
    return Encoded(np.asarray(ids, np.int32), np.asarray(labels, np.int32), images,
                   len(rounds) - kept)

  def encode_prompt(self, rounds: Sequence[conversation.Round]) -> np.ndarray:
    """int32[n] ids of a generation prompt (conversation.render(..., generation=True))."""
    ids: list[int] = []
    for i, rnd in enumerate(rounds):
      ids += self.encode_round(rnd, _starts_run(rounds, i))[0]
    return np.asarray(ids, np.int32)


def _starts_run(rounds: Sequence[conversation.Round], i: int) -> bool:
  """Whether round i starts a text run (first round, or the previous one ended special)."""
  return i == 0 or not rounds[i - 1] or rounds[i - 1][-1].kind != "text"


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
