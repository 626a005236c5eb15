"""Segment-by-segment tokenization, checked token by token against what LLaVA produces.

The tokenizer is LLaMA-style and built here: BPE with byte fallback, `▁` metaspace as a
normalizer (LLaMA's legacy layout), `<s>` added in front. The references below re-derive
LLaVA's `tokenizer_image_token` + `preprocess_v1` / `preprocess_llama_2` / `preprocess_plain`
(haotian-liu/LLaVA, llava/train/train.py) from their description: tokenize the whole prompt
string split at `<image>`, then mask by round lengths.
"""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from tokenizers import AddedToken
from tokenizers import Tokenizer
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers
import transformers

from llava_jax.data import conversation as conv
from llava_jax.data import tokenize

IMG = 4
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CORPUS = [
    conv.VICUNA_V1_SYSTEM, conv.LLAVA_LLAMA_2_SYSTEM, "USER: ASSISTANT: [INST] [/INST] <<SYS>>",
    "What is in the picture? A red ball lies on the green grass.",
    "What colour is the ball? It is red. Is it big? No, it is small. How many balls are there?",
    "There are two balls. The sky is blue and the sun is bright.",
] * 20


def llama_style_tokenizer():
  """LLaMA-layout BPE: trained with a splitting metaspace, encoded with LLaMA's normalizer."""
  trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
  trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="always", split=True)
  trainer_tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=SPECIALS, show_progress=False))
  learned = json.loads(trainer_tok.to_str())["model"]
  vocab = {t: i for i, t in enumerate(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
  for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
    vocab.setdefault(piece, len(vocab))
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
  tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0",
                                                     special_tokens=[("<s>", 1)])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<pad>", extra_special_tokens=["<image>"])


def llava_image_tokenize(prompt, tok):
  """LLaVA's tokenizer_image_token: tokenize between <image>s, BOS only at the very front."""
  chunks = [tok(c).input_ids for c in prompt.split("<image>")]
  ids = [chunks[0][0]]
  for i, chunk in enumerate(chunks):
    if i:
      ids.append(IMG)
    ids += chunk[1:]
  return ids


def llava_labels(prompt, tok, template):
  """LLaVA's masking: per round (split at </s>), hide BOS + instruction by token counts."""
  ids = llava_image_tokenize(prompt.removeprefix("<s>"), tok)
  labels = list(ids)
  if template == "plain":
    n = len(llava_image_tokenize("<image>" * prompt.count("<image>"), tok))
    return ids, [tokenize.IGNORE] * n + labels[n:]
  sep = " ASSISTANT: " if template == "vicuna_v1" else "[/INST] "
  cur = 1
  labels[:1] = [tokenize.IGNORE]
  for rnd in prompt.removeprefix("<s>").split("</s>"):
    parts = rnd.split(sep)
    if not rnd or len(parts) != 2:
      break
    round_len = len(llava_image_tokenize(rnd, tok))
    instruction_len = len(llava_image_tokenize(parts[0] + sep, tok)) - 2
    labels[cur:cur + instruction_len] = [tokenize.IGNORE] * instruction_len
    cur += round_len
  labels[cur:] = [tokenize.IGNORE] * (len(labels) - cur)
  assert cur == len(ids), "LLaVA would report a tokenization mismatch here"
  return ids, labels


CONVERSATIONS = {
    "image_first_multi_turn": [
        ("human", "<image>\nWhat is in the picture?"), ("gpt", "A red ball lies on the grass."),
        ("human", "What colour is the ball?"), ("gpt", "It is red."),
        ("human", "Is it big?"), ("gpt", "No, it is small.")],
    "image_after_question": [("human", "How many balls are there?\n<image>"),
                             ("gpt", "There are two balls.")],
    "text_only": [("human", "Is the sky blue?"), ("gpt", "Yes."), ("human", "Why?"),
                  ("gpt", "The sun is bright.")],
    "turns_start_with_space_and_newline": [
        ("human", "<image>\n What is in the picture?"), ("gpt", " A red ball."),
        ("human", "\nWhat colour is the ball?"), ("gpt", "\nIt is red."),
        ("human", "  Is it big?"), ("gpt", "  No.\n")],
}


class TokenizeTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = llama_style_tokenizer()
    cls.enc = tokenize.SegmentEncoder(cls.tok, image_token_id=IMG, num_image_tokens=1)

  def tokens(self, ids):
    return self.tok.convert_ids_to_tokens([int(i) for i in ids])

  @parameterized.product(name=list(CONVERSATIONS), template=["vicuna_v1", "llama_2"])
  def test_matches_llava_token_by_token(self, name, template):
    rounds = conv.render(template, CONVERSATIONS[name])
    ours = self.enc.encode(rounds)
    ids, labels = llava_labels(conv.prompt_text(rounds), self.tok, template)
    self.assertEqual(self.tokens(ours.input_ids), self.tokens(ids))
    self.assertEqual(ours.labels.tolist(), labels)

  def test_plain_matches_llava(self):
    rounds = conv.render("plain", [("human", "Describe it.\n<image>"), ("gpt", "A red ball.")])
    ours = self.enc.encode(rounds)
    ids, labels = llava_labels(conv.prompt_text(rounds), self.tok, "plain")
    self.assertEqual(ours.input_ids.tolist(), ids)
    self.assertEqual(ours.labels.tolist(), labels)
    # BOS and image unsupervised; caption and the closing "\n" supervised.
    self.assertEqual(self.tokens(ours.input_ids[:2]), ["<s>", "<image>"])
    self.assertEqual(self.tok.decode(ours.labels[2:]), "A red ball.\n")

  def test_vicuna_spelled_out(self):
    rounds = conv.render("vicuna_v1", [("human", "<image>\nIs it big?"), ("gpt", " No.")])
    got = self.enc.encode(rounds)
    encode = lambda s: self.tok.encode(s, add_special_tokens=False)
    system = encode(conv.VICUNA_V1_SYSTEM + " USER: ")
    question = encode("\nIs it big? ASSISTANT:")
    answer = encode(" No.")   # the separating space is the dummy prefix: "▁", "▁No", "."
    self.assertEqual(got.input_ids.tolist(), [1, *system, IMG, *question, *answer, 2])
    self.assertEqual(self.tokens(answer)[:2], ["▁", "▁No"])
    n_hidden = 1 + len(system) + 1 + len(question)
    self.assertEqual(got.labels.tolist(), [-100] * n_hidden + answer + [2])
    self.assertEqual(self.tokens(question)[:2], ["▁", "<0x0A>"])   # like tokenizer_image_token

  def test_every_supervised_token_is_answer_or_eos(self):
    rounds = conv.render("vicuna_v1", CONVERSATIONS["image_first_multi_turn"])
    got = self.enc.encode(rounds)
    supervised = got.labels[got.labels != tokenize.IGNORE]
    self.assertEqual(self.tok.decode(supervised),
                     "A red ball lies on the grass.</s> It is red.</s> No, it is small.</s>")

  def test_image_expands_to_num_image_tokens(self):
    enc = tokenize.SegmentEncoder(self.tok, image_token_id=IMG, num_image_tokens=7)
    got = enc.encode(conv.render("vicuna_v1", CONVERSATIONS["image_first_multi_turn"]))
    where = np.flatnonzero(got.input_ids == IMG)
    self.assertLen(where, 7)
    np.testing.assert_array_equal(np.diff(where), 1)   # one contiguous run
    self.assertTrue(np.all(got.labels[where] == tokenize.IGNORE))
    self.assertEqual(got.num_images, 1)

  def test_truncation_keeps_whole_rounds(self):
    enc = tokenize.SegmentEncoder(self.tok, image_token_id=IMG, num_image_tokens=16)
    rounds = conv.render("vicuna_v1", CONVERSATIONS["image_first_multi_turn"])
    full = enc.encode(rounds)
    first_two = enc.encode(rounds[:2])
    got = enc.encode(rounds, max_len=len(full.input_ids) - 1)
    np.testing.assert_array_equal(got.input_ids, first_two.input_ids)
    np.testing.assert_array_equal(got.labels, first_two.labels)
    self.assertEqual((got.rounds_dropped, got.input_ids[-1], got.labels[-1]), (1, 2, 2))

  def test_sample_that_cannot_keep_an_answer_is_dropped(self):
    enc = tokenize.SegmentEncoder(self.tok, image_token_id=IMG, num_image_tokens=16)
    rounds = conv.render("vicuna_v1", CONVERSATIONS["image_first_multi_turn"])
    need = len(enc.encode(rounds[:1]).input_ids)
    with self.assertRaisesRegex(tokenize.SampleDropped, f"needs {need} tokens > max_len=40"):
      enc.encode(rounds, max_len=40)   # would cut inside the 16 image tokens or the answer
    self.assertLen(enc.encode(rounds, max_len=need).input_ids, need)

  def test_generation_prompt_is_the_training_prefix(self):
    turns = CONVERSATIONS["image_first_multi_turn"]
    train = self.enc.encode(conv.render("vicuna_v1", turns))
    prompt = self.enc.encode_prompt(conv.render("vicuna_v1", turns[:3], generation=True))
    np.testing.assert_array_equal(train.input_ids[:len(prompt)], prompt)
    self.assertNotEqual(train.labels[len(prompt)], tokenize.IGNORE)   # the answer starts here
    self.assertEqual(train.labels[len(prompt) - 1], tokenize.IGNORE)

  def test_pad_to(self):
    got = self.enc.encode(conv.render("vicuna_v1", CONVERSATIONS["text_only"]))
    n = len(got.input_ids)
    row = tokenize.pad_to(got, n + 5, pad=3)
    self.assertEqual(row["input_ids"][n:].tolist(), [3] * 5)
    self.assertEqual(row["labels"][n:].tolist(), [-100] * 5)
    self.assertEqual(row["segment_ids"].tolist(), [1] * n + [0] * 5)
    self.assertEqual(row["positions"].tolist(), list(range(n)) + [0] * 5)
    self.assertTrue(all(v.dtype == np.int32 for v in row.values()))

  def test_mismatched_image_token_id_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "maps <image> to 4 but the model expects"):
      tokenize.SegmentEncoder(self.tok, image_token_id=32000, num_image_tokens=1)

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
