"""One tokenization of the rendered prompt, checked token by token against LLaVA's rules.

The references re-derive, from their description, what LLaVA's `llava/train/train.py` does:
`preprocess_multimodal` (each sentence with `<image>`: markers removed, text stripped,
"<image>\\n" in front, stripped again), the leading gpt turn dropped, `get_prompt()`'s strings,
`tokenizer_image_token` (the prompt tokenized between `<image>`s, BOS once in front) and the
masking of `preprocess_v1` / `preprocess_llama_2` / `preprocess_plain` (per round split at
"</s>": BOS and the instruction hidden by token counts, the rest supervised). On legacy
tokenizers (the kind LLaVA trained with) ours must equal them exactly; on every tokenizer the
ids must be the tokenization of the prompt text.
"""

import os
import tempfile
import types

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from llava_jax.data import conversation as conv
from llava_jax.data import tokenize
import prompt_tokenizers
from prompt_tokenizers import IMG

SYSTEMS = {"vicuna_v1": conv.VICUNA_V1_SYSTEM, "llama_2": conv.LLAVA_LLAMA_2_SYSTEM}


# ---------------------------------------------------------------- LLaVA's rules, restated


def llava_sources(turns, has_image):
  turns = [list(t) for t in turns]
  if turns[0][0] == "gpt":           # "Skip the first one if it is not from human"
    turns = turns[1:]
  if has_image:                      # preprocess_multimodal
    for t in turns:
      if "<image>" in t[1]:
        t[1] = ("<image>\n" + t[1].replace("<image>", "").strip()).strip()
  return turns


def llava_prompt(template, turns):
  """Conversation.get_prompt() (no BOS: LLaVA's tokenizer adds it)."""
  if template == "vicuna_v1":
    out = SYSTEMS[template] + " "
    for i, (role, text) in enumerate(turns):
      out += ("USER" if role == "human" else "ASSISTANT") + ": " + text + (" ", "</s>")[i % 2]
    return out
  out = ""
  for i, (role, text) in enumerate(turns):
    if role == "human":
      sys_block = f"<<SYS>>\n{SYSTEMS[template]}\n<</SYS>>\n\n" if i == 0 else ""
      out += f"<s>[INST] {sys_block}{text} [/INST]"
    else:
      out += f" {text} </s>"
  return out.removeprefix("<s>")


def llava_tokenize(prompt, tok):
  """tokenizer_image_token with one image id per image."""
  chunks = [tok(c).input_ids for c in prompt.split("<image>")]
  ids = [chunks[0][0]]
  for i, chunk in enumerate(chunks):
    ids += ([IMG] if i else []) + chunk[1:]
  return ids


def llava_reference(template, turns, tok):
  """(input_ids, labels) LLaVA trains on; AssertionError where LLaVA reports a mismatch."""
  has_image = any("<image>" in t for _, t in turns)
  turns = llava_sources(turns, has_image)
  if template == "plain":
    prompt = "<image>" + turns[1][1] + "\n"
    ids = llava_tokenize(prompt, tok)
    return ids, [tokenize.IGNORE] * 2 + ids[2:]
  prompt = llava_prompt(template, turns)
  ids = llava_tokenize(prompt, tok)
  labels = [tokenize.IGNORE] + ids[1:]
  sep = " ASSISTANT: " if template == "vicuna_v1" else "[/INST] "
  cur = 1
  for rnd in prompt.split("</s>"):
    parts = rnd.split(sep)
    if not rnd or len(parts) != 2:
      break
    round_len = len(llava_tokenize(rnd, tok))
    instruction_len = len(llava_tokenize(parts[0] + sep, tok)) - 2
    labels[cur:cur + instruction_len] = [tokenize.IGNORE] * instruction_len
    cur += round_len
  labels[cur:] = [tokenize.IGNORE] * (len(labels) - cur)
  assert cur == len(ids), "LLaVA would report a tokenization mismatch here"
  return ids, labels


# ---------------------------------------------------------------- ours


def encoder(tok, num_image_tokens=1):
  return tokenize.PromptTokenizer(tok, image_token_id=IMG, num_image_tokens=num_image_tokens)


def ours(template, turns, tok, placement="front", **kwargs):
  images = sum(t.count("<image>") for _, t in turns)
  turns = conv.training_turns(turns, num_images=images, placement=placement)
  enc = encoder(tok, **kwargs)
  return enc.encode(enc.render(template, turns))


CONVERSATIONS = {
    "image_first_multi_turn": [
        ("human", "<image>\nWhat is in the picture?"), ("gpt", "A red ball lies on the grass."),
        ("human", "What colour is the ball?"), ("gpt", "It is red."),
        ("human", "Is it big?"), ("gpt", "No, it is small.")],
    "image_after_question": [("human", "How many balls are there?\n<image>"),
                             ("gpt", "There are two balls.")],
    "image_in_the_middle": [("human", "Look at <image> and say: what is red?"),
                            ("gpt", "The ball.")],
    "image_with_whitespace": [("human", "  <image> \n\n What is red?  "), ("gpt", "The ball.")],
    "image_only": [("human", "<image>"), ("gpt", "A red ball.")],
    "text_only": [("human", "Is the sky blue?"), ("gpt", "Yes."), ("human", "Why?"),
                  ("gpt", "The sun is bright.")],
    "spaces_and_newlines": [
        ("human", "<image>\n What is in the picture?"), ("gpt", " An astronaut."),
        ("human", "\nWhat colour is the ball?\n"), ("gpt", "\nIt is red.\n"),
        ("human", "  Is it big? "), ("gpt", "  No.  ")],
    "cjk_and_emoji": [("human", "<image>\n这是什么？🙂"), ("gpt", "一个红色的球。🎈 ok"),
                      ("human", "色は？"), ("gpt", "赤です 🔴")],
    "leading_gpt_turn": [("gpt", "Hello! How can I help?"), ("human", "Is the sky blue?"),
                         ("gpt", "Yes, it is.")],
}
LEGACY = ("legacy", "demo")   # the styles LLaVA's length arithmetic works on


class LlavaParityTest(parameterized.TestCase):

  @parameterized.product(name=list(CONVERSATIONS), template=["vicuna_v1", "llama_2"],
                         style=LEGACY)
  def test_matches_llava_token_by_token(self, name, template, style):
    tok = prompt_tokenizers.build(style)
    got = ours(template, CONVERSATIONS[name], tok)
    ids, labels = llava_reference(template, CONVERSATIONS[name], tok)
    self.assertEqual(tok.convert_ids_to_tokens(got.input_ids.tolist()),
                     tok.convert_ids_to_tokens(ids))
    self.assertEqual(got.labels.tolist(), labels)

  @parameterized.product(caption=["A red ball.", " A red ball. ", "一个红色的球。🎈"],
                         question=["Describe it.\n<image>", "<image>\nDescribe it."],
                         style=LEGACY)
  def test_plain_matches_llava(self, caption, question, style):
    tok = prompt_tokenizers.build(style)
    turns = [("human", question), ("gpt", caption)]
    got = ours("plain", turns, tok)
    ids, labels = llava_reference("plain", turns, tok)
    self.assertEqual(got.input_ids.tolist(), ids)
    self.assertEqual(got.labels.tolist(), labels)
    # BOS and the image hidden; the whole caption and its "\n" supervised.
    self.assertEqual(got.labels[:2].tolist(), [tokenize.IGNORE] * 2)
    np.testing.assert_array_equal(got.labels[2:], got.input_ids[2:])

  def test_answer_with_leading_space_keeps_both_spaces(self):
    # "ASSISTANT:" + " " + " An astronaut.": two word starts, as LLaVA tokenizes it.
    tok = prompt_tokenizers.build("legacy")
    got = ours("vicuna_v1", [("human", "<image>\nWho?"), ("gpt", " An astronaut.")], tok)
    supervised = tok.convert_ids_to_tokens(got.labels[got.labels != tokenize.IGNORE].tolist())
    self.assertEqual(supervised[:3], ["▁", "▁A", "n"])

  def test_image_placement_front_is_llavas(self):
    tok = prompt_tokenizers.build("legacy")
    after = ours("vicuna_v1", CONVERSATIONS["image_after_question"], tok)
    written = ours("vicuna_v1", CONVERSATIONS["image_after_question"], tok,
                   placement="as_written")
    self.assertNotEqual(after.input_ids.tolist(), written.input_ids.tolist())
    turns = conv.training_turns(CONVERSATIONS["image_after_question"], num_images=1,
                                   placement="front")
    text = conv.render("vicuna_v1", turns).text
    self.assertIn("USER: <image>\nHow many balls are there? ASSISTANT:", text)


class EveryTokenizerTest(parameterized.TestCase):
  """On any tokenizer the ids are the tokenization of the prompt string, labels its answers."""

  @parameterized.product(name=list(CONVERSATIONS), template=["vicuna_v1", "llama_2"],
                         style=prompt_tokenizers.STYLES)
  def test_ids_are_the_prompt_text_tokenized(self, name, template, style):
    tok = prompt_tokenizers.build(style)
    got = ours(template, CONVERSATIONS[name], tok, num_image_tokens=3)
    has_image = any("<image>" in t for _, t in CONVERSATIONS[name])
    prompt = "<s>" + llava_prompt(template, llava_sources(CONVERSATIONS[name], has_image))
    whole = tok(prompt, add_special_tokens=False).input_ids
    expanded = [i for t in whole for i in ([t] * 3 if t == IMG else [t])]
    self.assertEqual(got.input_ids.tolist(), expanded)
    # Labels by prefix counting: the tokens of prompt[:end] minus those of prompt[:start].
    count = lambda s: sum(3 if t == IMG else 1 for t in tok(s, add_special_tokens=False).input_ids)
    expected = np.full(len(expanded), tokenize.IGNORE)
    sep = " ASSISTANT:" if template == "vicuna_v1" else " [/INST]"
    start = 0
    while (start := prompt.find(sep, start)) >= 0:
      start += len(sep)
      end = prompt.index("</s>", start) + len("</s>")
      lo, hi = count(prompt[:start]), count(prompt[:end])
      expected[lo:hi] = got.input_ids[lo:hi]
    self.assertEqual(got.labels.tolist(), expected.tolist())

  def test_non_legacy_text_after_eos_starts_no_word(self):
    # LLaVA (and transformers' chat templates) tokenize the whole prompt: "</s>USER:" reads
    # "USER", ":" here, not the "▁USER:" a separately tokenized round would give.
    tok = prompt_tokenizers.build("non_legacy")
    got = ours("vicuna_v1", CONVERSATIONS["text_only"], tok)
    tokens = tok.convert_ids_to_tokens(got.input_ids.tolist())
    after_eos = tokens[tokens.index("</s>") + 1:][:2]
    self.assertEqual(after_eos, ["USER", ":"])


class PromptTokenizerTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = prompt_tokenizers.build("legacy")

  def encode(self, turns, template="vicuna_v1", num_image_tokens=1, **kwargs):
    enc = encoder(self.tok, num_image_tokens)
    return enc, enc.encode(enc.render(template, turns), **kwargs)

  def test_every_supervised_token_is_answer_or_eos(self):
    _, got = self.encode(CONVERSATIONS["image_first_multi_turn"])
    supervised = got.labels[got.labels != tokenize.IGNORE]
    self.assertEqual(self.tok.decode(supervised),
                     "A red ball lies on the grass.</s> It is red.</s> No, it is small.</s>")

  def test_image_expands_to_num_image_tokens(self):
    _, got = self.encode(CONVERSATIONS["image_first_multi_turn"], num_image_tokens=7)
    where = np.flatnonzero(got.input_ids == IMG)
    self.assertLen(where, 7)
    np.testing.assert_array_equal(np.diff(where), 1)   # one contiguous run
    self.assertTrue(np.all(got.labels[where] == tokenize.IGNORE))
    self.assertEqual(got.num_images, 1)

  def test_truncation_keeps_whole_rounds(self):
    turns = CONVERSATIONS["image_first_multi_turn"]
    enc, full = self.encode(turns, num_image_tokens=16)
    _, first_two = self.encode(turns[:4], num_image_tokens=16)
    got = enc.encode(enc.render("vicuna_v1", turns), max_len=len(full.input_ids) - 1)
    np.testing.assert_array_equal(got.input_ids, first_two.input_ids)
    np.testing.assert_array_equal(got.labels, first_two.labels)
    self.assertEqual((got.rounds_dropped, got.input_ids[-1], got.labels[-1]), (1, 2, 2))

  def test_sample_that_cannot_keep_an_answer_is_dropped(self):
    turns = CONVERSATIONS["image_first_multi_turn"]
    enc, first = self.encode(turns[:2], num_image_tokens=16)
    need = len(first.input_ids)
    with self.assertRaisesRegex(tokenize.SampleDropped, f"needs {need} tokens > max_len=40"):
      enc.encode(enc.render("vicuna_v1", turns), max_len=40)
    self.assertLen(enc.encode(enc.render("vicuna_v1", turns), max_len=need).input_ids, need)

  @parameterized.parameters("vicuna_v1", "llama_2")
  def test_generation_prompt_is_the_training_prefix(self, template):
    turns = CONVERSATIONS["image_first_multi_turn"]
    enc, train = self.encode(turns, template)
    prompt = enc.encode_prompt(enc.render(template, turns[:3], generation=True))
    np.testing.assert_array_equal(train.input_ids[:len(prompt)], prompt)
    self.assertNotEqual(train.labels[len(prompt)], tokenize.IGNORE)   # the answer starts here
    self.assertEqual(train.labels[len(prompt) - 1], tokenize.IGNORE)

  def test_literal_eos_in_an_answer_stays_supervised(self):
    _, got = self.encode([("human", "Say it."), ("gpt", "It ends with </s> here.")])
    supervised = got.labels[got.labels != tokenize.IGNORE]
    self.assertEqual(self.tok.decode(supervised), "It ends with </s> here.</s>")
    self.assertEqual((supervised == 2).sum(), 2)   # the tokenizer reads it as EOS, as LLaVA's

  def test_pad_to(self):
    _, got = self.encode(CONVERSATIONS["text_only"])
    n = len(got.input_ids)
    row = tokenize.pad_to(got, n + 5, pad=3)
    self.assertEqual(row["input_ids"][n:].tolist(), [3] * 5)
    self.assertEqual(row["labels"][n:].tolist(), [-100] * 5)
    self.assertEqual(row["segment_ids"].tolist(), [1] * n + [0] * 5)
    self.assertEqual(row["positions"].tolist(), list(range(n)) + [0] * 5)
    self.assertTrue(all(v.dtype == np.int32 for v in row.values()))

  def test_mismatched_image_token_id_is_an_error(self):
    with self.assertRaisesRegex(tokenize.TokenizerError, "maps <image> to 4 but the model"):
      tokenize.PromptTokenizer(self.tok, image_token_id=32000, num_image_tokens=1)

  def test_tokenizer_without_offsets_is_named(self):
    slow = types.SimpleNamespace(is_fast=False, name_or_path="models/slow-llama")
    with self.assertRaisesRegex(tokenize.TokenizerError,
                                r"SimpleNamespace\(models/slow-llama\) cannot give character "
                                "offsets"):
      tokenize.PromptTokenizer(slow, image_token_id=IMG, num_image_tokens=1)

  def test_load_tokenizer_round_trip(self):
    with tempfile.TemporaryDirectory() as d:
      self.tok.save_pretrained(d)
      loaded = tokenize.load_tokenizer(d)
      text = "What colour is the ball?"
      self.assertEqual(loaded.encode(text), self.tok.encode(text))
      self.assertEqual(tokenize.pad_id(loaded), 3)
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      tokenize.load_tokenizer(os.path.join(d, "missing"))


if __name__ == "__main__":
  absltest.main()
