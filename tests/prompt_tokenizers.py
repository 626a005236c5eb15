"""The three tokenizer styles the prompt tests run on, built in a second or two each.

  legacy      LLaMA's legacy layout: `▁` metaspace with prepend_scheme="always" (every text run,
              also after a special token, starts a word), the layout LLaVA trained with;
  non_legacy  prepend_scheme="first": only the very start of the string gets the `▁`, as recent
              LLaMA tokenizers (`legacy=False`) do;
  demo        the tokenizer shipped in data/demo/tokenizer: the layout of LLaMA-2's own
              tokenizer.json (a Prepend("▁") + Replace(" ", "▁") normalizer, also legacy).
All have byte fallback, `<unk>`=0 `<s>`=1 `</s>`=2 `<pad>`=3 `<image>`=4.
"""

import functools
import json
import os

from tokenizers import AddedToken
from tokenizers import Tokenizer
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers
import transformers

from llava_jax.config import schema
from llava_jax.data import conversation as conv

IMG = 4
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CORPUS = [
    conv.VICUNA_V1_SYSTEM, conv.LLAVA_LLAMA_2_SYSTEM, "USER: ASSISTANT: [INST] [/INST] <<SYS>>",
    "What is in the picture? A red ball lies on the green grass.",
    "What colour is the ball? It is red. Is it big? No, it is small. How many balls are there?",
    "There are two balls. The sky is blue and the sun is bright.",
] * 20
STYLES = ("legacy", "non_legacy", "demo")


@functools.cache
def build(style: str) -> transformers.PreTrainedTokenizerFast:
  if style == "demo":
    return transformers.AutoTokenizer.from_pretrained(os.path.join(schema.DEMO_DIR, "tokenizer"))
  scheme = {"legacy": "always", "non_legacy": "first"}[style]
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
  tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme=scheme, split=False)
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<pad>", extra_special_tokens=["<image>"], add_bos_token=True)
