"""Train the demo's small LLaMA-style BPE tokenizer (byte fallback, `▁` metaspace).

Laid out like LLaMA's `tokenizer.json` (legacy mode): normalizer prepends `▁` and maps spaces to
`▁`, no pre-tokenizer, BPE with byte fallback over `<0x00>`..`<0xFF>`, a decoder that undoes it,
and a post-processor that adds `<s>`. Ids are fixed: `<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3,
`<image>`=4, bytes 5..260, learned pieces after (vocab <= 2048, the tiny model's vocab_size).
"""

from collections.abc import Iterable
import json

from tokenizers import AddedToken
from tokenizers import Tokenizer
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
MAX_VOCAB = 2048

# Template text from LLaVA's conversation.py, so prompts tokenize compactly.
TEMPLATE_TEXT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: USER: ASSISTANT:",
    "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand "
    "the visual content that the user provides, and assist the user with a variety of tasks using "
    "natural language.\n<</SYS>>\n\n [/INST]",
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = MAX_VOCAB) -> PreTrainedTokenizerFast:
  """A deterministic LLaMA-style BPE over `texts` (plus LLaVA's template strings)."""
  corpus = [t.replace("<image>", "") for t in texts] + list(TEMPLATE_TEXT) * 50
  # Train with a splitting metaspace pre-tokenizer so no merge crosses a word boundary; the final
  # tokenizer then needs no pre-tokenizer (LLaMA's layout) and encodes the same way.
  trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
  trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                       split=True)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(BYTE_TOKENS),
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False)
  trainer_tok.train_from_iterator(corpus, trainer=trainer)
  learned = json.loads(trainer_tok.to_str())["model"]
  pieces = sorted((i, p) for p, i in learned["vocab"].items() if p not in SPECIAL_TOKENS)
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
  for _, piece in pieces:
    vocab[piece] = len(vocab)
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                             fuse_unk=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                         normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  tok.post_processor = processors.TemplateProcessing(
      single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<pad>", extra_special_tokens=["<image>"], clean_up_tokenization_spaces=False,
      model_max_length=4096, padding_side="right")
