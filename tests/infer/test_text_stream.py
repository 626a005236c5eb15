"""Tests for llava_jax.infer.text_stream: incremental detokenization and stop strings."""

from absl.testing import absltest

from llava_jax.infer import text_stream
from tools.make_demo import tokenizer as demo_tokenizer

_TEXTS = ["a cat sits on a red mat near the window", "the dog runs in the park",
          "what is unusual about this image?"] * 20


class TextStreamTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = demo_tokenizer.train_tokenizer(_TEXTS, vocab_size=400)

  def _ids(self, text):
    return self.tok.encode(text, add_special_tokens=False)

  def test_pieces_concatenate_to_the_decoded_text(self):
    text = "the cat runs near the red window"
    ids = self._ids(text)
    stream = text_stream.TextStream(self.tok)
    pieces = [stream.push([i]) for i in ids] + [stream.finish()]
    self.assertEqual("".join(pieces), self.tok.decode(ids, skip_special_tokens=True))
    self.assertGreater(sum(bool(p) for p in pieces), 3)  # really incremental

  def test_split_utf8_character_is_held_back(self):
    ids = self._ids("é")  # not in the training text: byte fallback, two byte tokens
    self.assertLen(ids, 3)  # '▁' + two bytes
    stream = text_stream.TextStream(self.tok)
    out = [stream.push([i]) for i in ids]
    self.assertNotIn("\ufffd", "".join(out))
    self.assertEqual("".join(out) + stream.finish(), "é")

  def test_stop_string_across_tokens_cuts_the_text(self):
    ids = self._ids("the cat sits on a red mat near the window")
    stream = text_stream.TextStream(self.tok, stop_strings=["red mat"])
    out = []
    for i in ids:
      out.append(stream.push([i]))
      if stream.stopped:
        break
    self.assertTrue(stream.stopped)
    self.assertEqual("".join(out), "the cat sits on a ")
    self.assertEqual(stream.finish(), "")
    self.assertEqual(stream.push(self._ids("more")), "")

  def test_partial_stop_prefix_is_released_at_finish(self):
    stream = text_stream.TextStream(self.tok, stop_strings=["dog runs"])
    out = stream.push(self._ids("the dog"))
    self.assertNotIn("dog", out)  # could still become "dog runs"
    self.assertEqual(out + stream.finish(), "the dog")

  def _chunks(self, ids, size):
    """(ids, done) chunks of `size` tokens, the last one marked done (as generation yields)."""
    starts = range(0, len(ids), size)
    return [(ids[i:i + size], i + size >= len(ids)) for i in starts]

  def test_streamed_pieces_equal_the_full_decode(self):
    # Byte-fallback "é" splits a character across tokens; chunks of 1..4 split it differently.
    # A stop string that never matches holds "window" back until the done chunk releases it.
    ids = self._ids("the cat é runs near the red é window")
    for size in (1, 2, 3, 4):
      pieces = list(text_stream.stream_pieces(self.tok, self._chunks(ids, size), ["window pane"]))
      self.assertEqual("".join(pieces), self.tok.decode(ids, skip_special_tokens=True), size)
      self.assertTrue(all(pieces))   # no empty pieces
    self.assertGreater(len(list(text_stream.stream_pieces(self.tok, self._chunks(ids, 1)))), 3)

  def test_streamed_pieces_end_at_done_and_at_a_stop_string(self):
    ids = self._ids("the cat sits on a red mat near the window")
    done_early = [(ids[:3], True), (ids[3:], False)]   # nothing after the done chunk
    self.assertEqual("".join(text_stream.stream_pieces(self.tok, done_early)),
                     self.tok.decode(ids[:3], skip_special_tokens=True))
    stopped = text_stream.stream_pieces(self.tok, self._chunks(ids, 2), ["red mat"])
    self.assertEqual("".join(stopped), "the cat sits on a ")
    no_done = [(ids, False)]   # chunks run out: the held-back tail is still released
    self.assertEqual("".join(text_stream.stream_pieces(self.tok, no_done, ["window pane"])),
                     self.tok.decode(ids, skip_special_tokens=True))


if __name__ == "__main__":
  absltest.main()
