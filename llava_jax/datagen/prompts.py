"""Prompt data for the three generators: a system message plus few-shot example pairs.

Each generator has a folder under `prompts/` (text files written for this project):
`system_message.txt`, then pairs `NNN_context.txt` (a symbolic context) and
`NNN_response.txt` (the response we want for it), sent in order as user/assistant turns.
"""

import dataclasses
import functools
import glob
import os

PROMPTS_DIR = os.path.join(os.path.dirname(__file__), "prompts")

# Generator name → whether its context lists the object boxes. LLaVA's conversation generator
# sees captions only; the description and reasoning generators also see the boxes.
TYPES = {"conv": False, "detail": True, "reasoning": True}


@dataclasses.dataclass(frozen=True)
class Prompt:
  system: str
  examples: tuple[tuple[str, str], ...]   # (context, response) few-shot pairs

  def messages(self, context: str) -> list[dict]:
    """The chat-completions `messages` list asking for a response to `context`."""
    messages = [{"role": "system", "content": self.system}]
    for example_context, example_response in self.examples:
      messages.append({"role": "user", "content": example_context})
      messages.append({"role": "assistant", "content": example_response})
    messages.append({"role": "user", "content": context})
    return messages


@functools.cache
def load(kind: str, prompts_dir: str = PROMPTS_DIR) -> Prompt:
  folder = os.path.join(prompts_dir, kind)
  system = _read(os.path.join(folder, "system_message.txt"))
  examples = []
  for context_path in sorted(glob.glob(os.path.join(folder, "*_context.txt"))):
    response_path = context_path.replace("_context.txt", "_response.txt")
    if not os.path.exists(response_path):
      raise FileNotFoundError(f"{context_path} has no matching {response_path}")
    examples.append((_read(context_path), _read(response_path)))
  if not examples:
    raise FileNotFoundError(f"{folder}: no few-shot NNN_context.txt / NNN_response.txt pairs")
  return Prompt(system=system, examples=tuple(examples))


@functools.cache
def detail_instructions(prompts_dir: str = PROMPTS_DIR) -> tuple[str, ...]:
  """Human-turn wordings for detailed-description records, one per line (always ours)."""
  text = _read(os.path.join(prompts_dir, "detail", "instructions.txt"))
  return tuple(line.strip() for line in text.splitlines() if line.strip())


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read().strip()
