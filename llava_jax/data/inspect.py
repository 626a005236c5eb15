"""Show record N exactly as the model will be trained on it.

    python -m llava_jax.data.inspect --config=configs/finetune.py [--config.data.path=...] \\
        --index=N [--json]

Prints the final prompt text (after image placement and the template) with its supervised
character spans marked, then the tokenized sequence token run by token run, with the supervised
tokens marked (green on a terminal, `[[...]]` otherwise), each image as `<image x64 @ 41..104>`
(where its tokens sit), and the token count against `data.max_len`. `--json` prints
`{"id", "prompt", "supervised_spans", "input_ids", "labels"}` (unpadded; -100 = not supervised).
Check a new template or tokenizer with it before spending a pod-day on a run.
"""

import json
import sys

from absl import app
from absl import flags
import ml_collections
import numpy as np

from llava_jax.data import pipeline
from llava_jax.data import tokenize

_GREEN, _CYAN, _RESET = "\033[32m", "\033[36m", "\033[0m"


def _runs(input_ids: np.ndarray, labels: np.ndarray, image_token_id: int):
  """[(start, end, kind)] with kind "image" | "supervised" | "prompt", maximal runs."""
  kinds = np.where(input_ids == image_token_id, "image",
                   np.where(labels != tokenize.IGNORE, "supervised", "prompt"))
  runs, start = [], 0
  for i in range(1, len(kinds) + 1):
    if i == len(kinds) or kinds[i] != kinds[start]:
      runs.append((start, i, str(kinds[start])))
      start = i
  return runs


def _run_text(tokenizer, ids: list[int], start: int, end: int) -> str:
  """Text of ids[start:end] as it reads in context (prefix difference keeps leading spaces)."""
  before = tokenizer.decode(ids[:start], skip_special_tokens=False)
  upto = tokenizer.decode(ids[:end], skip_special_tokens=False)
  if upto.startswith(before):
    return upto[len(before):]
  return tokenizer.decode(ids[start:end], skip_special_tokens=False)


def render_tokens(tokenizer, input_ids: np.ndarray, labels: np.ndarray, image_token_id: int,
                  color: bool) -> str:
  """The sequence as text with supervised spans and image runs marked."""
  ids = [int(i) for i in input_ids]
  out = []
  for start, end, kind in _runs(input_ids, labels, image_token_id):
    if kind == "image":
      mark = f"<image x{end - start} @ {start}..{end - 1}>"
      out.append(f"{_CYAN}{mark}{_RESET}" if color else mark)
    elif kind == "supervised":
      text = _run_text(tokenizer, ids, start, end)
      out.append(f"{_GREEN}{text}{_RESET}" if color else f"[[{text}]]")
    else:
      out.append(_run_text(tokenizer, ids, start, end))
  return "".join(out)


def inspect_record(config: ml_collections.ConfigDict, index: int) -> dict:
  """{"id", "input_ids", "labels", "notes"} of record `index` (source order), or {"id", "skip"}."""
  source = pipeline.make_source(config.data)
  if not 0 <= index < len(source):
    raise IndexError(f"--index={index} but {config.data.path} has {len(source)} records")
  example = source[index]
  builder = pipeline.SampleBuilder(config.data, config.model, config.seed)
  try:
    encoded, names, notes = builder.tokens(example, index)
    builder.pixels_uint8(example, names, encoded.num_images)   # decoding errors skip it too
  except pipeline.BadSampleError as e:
    return {"id": example.id, "skip": str(e)}
  rendered = encoded.rendered
  return {"id": example.id, "prompt": rendered.text,
          "supervised_spans": [list(s) for s in rendered.supervised],
          "input_ids": encoded.input_ids.tolist(),
          "labels": encoded.labels.tolist(), "notes": notes, "images": names}


def mark_spans(text: str, spans, color: bool) -> str:
  """`text` with the supervised character spans marked."""
  out, at = [], 0
  for start, end in spans:
    piece = text[start:end]
    out += [text[at:start], f"{_GREEN}{piece}{_RESET}" if color else f"[[{piece}]]"]
    at = end
  return "".join(out + [text[at:]])


def describe(config: ml_collections.ConfigDict, index: int, color: bool) -> str:
  """The human-readable view of record `index`."""
  info = inspect_record(config, index)
  if "skip" in info:
    return f"record {info['id']} (index {index}) is SKIPPED by the pipeline: {info['skip']}"
  builder = pipeline.SampleBuilder(config.data, config.model, config.seed)
  ids, labels = np.asarray(info["input_ids"]), np.asarray(info["labels"])
  image_runs = [(s, e) for s, e, k in _runs(ids, labels, config.model.image_token_id)
                if k == "image"]
  legend = ("green = supervised" if color else "[[...]] = supervised") + ", the rest is masked"
  lines = [
      f"record {info['id']} (index {index}), template {config.data.template}",
      f"tokens: {len(ids)} of max_len {config.data.max_len}; supervised: "
      f"{int((labels != tokenize.IGNORE).sum())}; images: {len(image_runs)} "
      + " ".join(f"[{s}..{e - 1}]" for s, e in image_runs),
      *(f"note: {n}" for n in info["notes"]),
      f"({legend})",
      "",
      f"prompt text (image placement {config.data.image_placement}):",
      mark_spans(info["prompt"], info["supervised_spans"], color),
      "",
      "tokens:",
      render_tokens(builder.encoder.tokenizer, ids, labels, config.model.image_token_id, color),
  ]
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  config = flags.FLAGS.config
  index = flags.FLAGS.index
  if flags.FLAGS.json:
    info = inspect_record(config, index)
    keys = ("id", "skip", "prompt", "supervised_spans", "input_ids", "labels")
    print(json.dumps({k: info[k] for k in keys if k in info}, ensure_ascii=False))
  else:
    print(describe(config, index, color=sys.stdout.isatty()))


def define_flags() -> None:
  # Defined only when run as a program, so importing this module defines no global flags.
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_integer("index", 0, "Record index in the data file (source order).")
  flags.DEFINE_bool("json", False, "Print {id, input_ids, labels} as JSON.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
