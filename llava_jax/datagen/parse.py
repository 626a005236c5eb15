"""Generator responses → validated LLaVA conversation records.

A response that cannot become a good training record raises `Rejected` with a short reason
(counted in the run's statistics): 'unparseable', 'unbalanced_turns', 'empty_question',
'empty_answer', 'refusal', 'mentions_source' (and, in generate.py, 'truncated' for responses
cut off by max_tokens).
"""

import hashlib
import re

IMAGE_TOKEN = "<image>"

_TAG = re.compile(r"^[ \t]*\**[ \t]*(question|answer)[ \t]*\**[ \t]*:[ \t]*\**", re.I | re.M)
_SEPARATOR = re.compile(r"^[ \t]*={3,}[ \t]*$", re.M)

# Phrases by which chat models decline, or admit they cannot see the image.
_REFUSAL = re.compile(
    r"\b(as an ai( language)? model|i('m| am) (sorry|afraid)|i apologi[sz]e|"
    r"i (cannot|can't|can not|am unable to|'m unable to|am not able to) "
    r"(see|view|provide|help|assist|answer|determine|comply)|"
    r"i do(n't| not) have (the ability|access) to (see|view))", re.I)
# The generators are told to answer as if looking at the image: a response that names its
# text sources would teach the model to talk about captions it never sees.
_SOURCE = re.compile(
    r"\b(bounding box(es)?|(the|these|those|given|provided) (captions?|coordinates|"
    r"(five )?sentences|descriptions? provided))\b", re.I)


class Rejected(ValueError):
  """A response that is not turned into a record; `reason` is the counted category."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def parse_qa(text: str) -> list[tuple[str, str]]:
  """`Question:` / `Answer:` blocks (optionally separated by `===` lines) → [(q, a), ...].

  Text before the first tag (e.g. "Sure, here is a conversation:") is ignored.
  """
  pieces = _TAG.split(text)
  if len(pieces) < 3:
    raise Rejected("unparseable", "no 'Question:' / 'Answer:' blocks")
  turns = [(tag.lower(), _clean(body)) for tag, body in zip(pieces[1::2], pieces[2::2])]
  if (len(turns) % 2 or any(tag != ("question" if i % 2 == 0 else "answer")
                            for i, (tag, _) in enumerate(turns))):
    raise Rejected("unbalanced_turns", " ".join(tag for tag, _ in turns))
  pairs = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns), 2)]
  for question, answer in pairs:
    if not question:
      raise Rejected("empty_question")
    if not answer:
      raise Rejected("empty_answer")
  return pairs


def parse_description(text: str) -> str:
  """A detailed-description response is the answer itself (a stray 'Answer:' is dropped)."""
  text = _clean(re.sub(r"^\s*answer\s*:", "", text, flags=re.I))
  if not text:
    raise Rejected("empty_answer")
  return text


def check_content(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
  """Rejects refusals and source mentions; drops repeated questions within one record."""
  seen, kept = set(), []
  for question, answer in pairs:
    if _REFUSAL.search(answer):
      raise Rejected("refusal", answer[:80])
    if _SOURCE.search(answer) or _SOURCE.search(question):
      raise Rejected("mentions_source", (_SOURCE.search(answer) or _SOURCE.search(question))[0])
    key = _normalize(question)
    if key not in seen:
      seen.add(key)
      kept.append((question, answer))
  return kept


def to_record(record_id: str, image: str, pairs: list[tuple[str, str]]) -> dict:
  """LLaVA record: the image token opens the first human turn."""
  conversations = []
  for i, (question, answer) in enumerate(pairs):
    conversations.append({"from": "human",
                          "value": f"{IMAGE_TOKEN}\n{question}" if i == 0 else question})
    conversations.append({"from": "gpt", "value": answer})
  return {"id": record_id, "image": image, "conversations": conversations}


def dedup_key(record: dict) -> str:
  """Equal for records whose turns differ only in case, spacing and punctuation."""
  text = "\x00".join(_normalize(turn["value"].replace(IMAGE_TOKEN, ""))
                     for turn in record["conversations"])
  return hashlib.sha1(text.encode()).hexdigest()


def _clean(body: str) -> str:
  return _SEPARATOR.sub("", body).strip()


def _normalize(text: str) -> str:
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
