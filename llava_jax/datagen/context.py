"""The symbolic image context a text-only LLM sees in place of the image (LLaVA, Sec. 3).

Captions one per line; then, after a blank line, one box per line as
`category: [x1, y1, x2, y2]`, the coordinates normalized to the image size and rounded to
3 decimals (written as Python prints the rounded float, e.g. `0.53`, `1.0`, as in LLaVA's files).
"""

from llava_jax.datagen.annotations import ImageAnnotation


def symbolic_context(ann: ImageAnnotation, with_boxes: bool = True) -> str:
  lines = list(ann.captions)
  if with_boxes and ann.boxes:
    lines.append("")
    lines += [f"{category}: [{', '.join(str(round(v, 3)) for v in box)}]"
              for category, box in ann.boxes]
  return "\n".join(lines)
