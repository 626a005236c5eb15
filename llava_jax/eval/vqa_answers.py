"""The VQA answer normalization and accuracy (VQAv2, VizWiz, TextVQA), written for this project
from the official VQA evaluation's rules.

normalize(answer):
  1. lowercase; newlines and tabs become spaces;
  2. punctuation: each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted when it touches
     a space or the answer has a digit-comma-digit ("1,000"), and becomes a space otherwise; a
     period not followed by a digit is deleted ("3.5" keeps its point);
  3. number words zero..ten (and "none") become digits; the articles a, an, the are dropped;
  4. apostrophe-less contractions get their apostrophe back ("dont" → "don't").
accuracy(prediction, humans): for each of the leave-one-out subsets of the (usually 10) human
answers, min(#humans in the subset who gave the prediction / 3, 1); the mean over the subsets.
"""

import re

_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# The contractions the official table restores; each is also matched with its apostrophes dropped
# or kept in any combination ("couldntve", "couldnt've", "couldn'tve" → "couldn't've").
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll "
    "let's ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't "
    "'ow's'at shan't she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've "
    "they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's "
    "won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll "
    "you're you've").split()


def _spellings(word: str) -> set[str]:
  """Every spelling of `word` with some of its apostrophes dropped."""
  spellings = {""}
  for ch in word:
    spellings = {s + ch for s in spellings} | ({s for s in spellings} if ch == "'" else set())
  return spellings


CONTRACTIONS = {s: c for c in _CONTRACTIONS for s in _spellings(c) if s != c}


def normalize(answer: str) -> str:
  text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
  has_number_comma = _COMMA_IN_NUMBER.search(text) is not None
  for p in _PUNCT:
    if f"{p} " in text or f" {p}" in text or has_number_comma:
      text = text.replace(p, "")
    else:
      text = text.replace(p, " ")
  text = _PERIOD.sub("", text)
  words = [NUMBER_WORDS.get(w, w) for w in text.split()]
  words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
  return " ".join(words)


def accuracy(prediction: str, humans: list[str]) -> float:
  """VQA accuracy in [0, 1] of one prediction against the human answers (normalized here)."""
  if not humans:
    raise ValueError("no human answers to score against")
  predicted = normalize(prediction)
  matches = [normalize(h) == predicted for h in humans]
  if len(humans) == 1:
    return float(matches[0])
  total = sum(matches)
  return sum(min((total - m) / 3, 1.0) for m in matches) / len(humans)
