"""Evaluation output: a JSON file (summary + per-item details) and a printed table."""

import json
import os
from typing import Sequence


def write(path: str, task: str, summary: dict, items: Sequence[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"task": task, "summary": summary, "items": list(items)}, f, ensure_ascii=False,
              indent=1)
  os.replace(tmp, path)


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A plain fixed-width table; floats with one decimal."""
  cells = [[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
  widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  line = lambda values: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                                  for i, (v, w) in enumerate(zip(values, widths)))
  return "\n".join([title, line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
                   + [line(r) for r in cells])
