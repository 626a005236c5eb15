"""Token ids → text pieces as they arrive, cut at stop strings.

Two things make streaming text subtle: a byte-level BPE token can end in the middle of a UTF-8
character (the tokenizer then shows U+FFFD until the next token completes it), and a stop string
can straddle tokens. So a piece is only released once it can no longer change: text that ends in
U+FFFD or that could still grow into a stop string is held back.
"""

from collections.abc import Iterable, Iterator, Sequence

_REPLACEMENT = "\ufffd"


class TextStream:
  """Incremental detokenizer for one generated sequence.

  `push(ids)` returns the newly final text; once a stop string appears, `stopped` is True, the
  text before it has been returned and everything after it is dropped. `finish()` releases what
  was held back when generation ends for another reason (EOS, length).
  """

  def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
    self._tokenizer = tokenizer
    self._stop_strings = [s for s in stop_strings if s]
    self._ids: list[int] = []
    self._emitted = 0  # characters of the decoded text already returned
    self.stopped = False
    self.finished = False  # set by `advance` once the sequence is over

  @property
  def token_ids(self) -> list[int]:
    return list(self._ids)

  def _text(self) -> str:
    return self._tokenizer.decode(self._ids, skip_special_tokens=True)

  def _stop_at(self, text: str) -> int | None:
    """Index of the earliest stop string that starts at or after what could still change."""
    # A stop string could begin inside already-emitted text only if it was held back, so
    # searching from (emitted - longest stop + 1) catches every new occurrence.
    start = max(0, self._emitted - max((len(s) for s in self._stop_strings), default=0) + 1)
    hits = [i for s in self._stop_strings if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None

  def _holdback(self, text: str) -> int:
    """How many trailing characters might still change or start a stop string."""
    hold = 0
    if text.endswith(_REPLACEMENT):
      hold = len(text) - len(text.rstrip(_REPLACEMENT))
    for s in self._stop_strings:
      for n in range(min(len(s) - 1, len(text)), 0, -1):
        if text.endswith(s[:n]):
          hold = max(hold, n)
          break
    return hold

  def push(self, ids: Sequence[int]) -> str:
    """Adds generated ids; returns the text that became final."""
    if self.stopped or not len(ids):
      return ""
    self._ids.extend(int(i) for i in ids)
    text = self._text()
    stop = self._stop_at(text)
    if stop is not None:
      self.stopped = True
      piece = text[self._emitted:stop]
      self._emitted = max(self._emitted, stop)
      return piece
    final = len(text) - self._holdback(text)
    if final <= self._emitted:
      return ""
    piece, self._emitted = text[self._emitted:final], final
    return piece

  def advance(self, ids: Sequence[int], done: bool) -> str:
    """The one streaming step: `push(ids)`, then `finish()` once the sequence is over.

    Over means `done` (EOS, length, cancelled) or a stop string; `finished` is then True and
    nothing more comes. Chat (`stream_pieces`) and the server's workers both step through here.
    """
    piece = self.push(ids)
    if done or self.stopped:
      piece += self.finish()
      self.finished = True
    return piece

  def finish(self) -> str:
    """Releases held-back text at the end of generation."""
    if self.stopped:
      return ""
    text = self._text().rstrip(_REPLACEMENT)
    piece, self._emitted = text[self._emitted:], max(self._emitted, len(text))
    return piece


def stream_pieces(tokenizer, chunks: Iterable[tuple[Sequence[int], bool]],
                  stop_strings: Sequence[str] = ()) -> Iterator[str]:
  """Text pieces of one sequence from its (new ids, done) chunks; joined, the whole answer.

  Ends at the first chunk marked done, at a stop string, or when `chunks` runs out.
  """
  text = TextStream(tokenizer, stop_strings)
  for ids, done in chunks:
    piece = text.advance(ids, done)
    if piece:
      yield piece
    if text.finished:
      return
  tail = text.advance((), True)
  if tail:
    yield tail
