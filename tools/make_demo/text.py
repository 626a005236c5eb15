"""True captions, conversations, detailed descriptions and reasoning answers for demo scenes.

Each function reads only the scene's known content, so the text cannot contradict the image.
The language is deliberately plain and repetitive so a tiny model can learn it quickly.
"""

import collections

import numpy as np

from tools.make_demo import scenes as scenes_lib

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# A few of LLaVA's stage-1 "brief description" instructions and its detailed-description ones.
BRIEF_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
)
DETAIL_INSTRUCTIONS = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
)

QA = tuple[str, str]


def count_phrase(n: int, noun: str) -> str:
  """count_phrase(2, 'red circle') -> 'two red circles'."""
  return f"{NUMBER_WORDS[n]} {noun}{'' if n == 1 else 's'}"


def there_is(n: int, noun: str) -> str:
  """there_is(1, 'tree') -> 'There is one tree'; there_is(0, 'tree') -> 'There are no trees'."""
  if n == 0:
    return f"There are no {noun}s"
  return f"There {'is' if n == 1 else 'are'} {count_phrase(n, noun)}"


def join_words(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- shapes


def _type_counts(scene: scenes_lib.ShapesScene) -> collections.Counter:
  return collections.Counter((s.colour, s.kind) for s in scene.shapes)


def a_or_count(n: int, noun: str) -> str:
  """a_or_count(1, 'red circle') -> 'a red circle'; (2, ...) -> 'two red circles'."""
  return f"{article(noun)} {noun}" if n == 1 else count_phrase(n, noun)


def article(noun: str) -> str:
  return "an" if noun[0] in "aeiou" else "a"


def shapes_caption(scene: scenes_lib.ShapesScene) -> str:
  parts = [a_or_count(n, f"{c} {k}") for (c, k), n in sorted(_type_counts(scene).items())]
  text = join_words(parts)
  return f"{text[0].upper() + text[1:]} on a {scene.background} background."


def shapes_detail(scene: scenes_lib.ShapesScene) -> str:
  n = len(scene.shapes)
  lines = [f"The image shows {count_phrase(n, 'shape')} on a plain {scene.background} background."]
  for s in scene.shapes:
    where = scenes_lib.CELL_PHRASES[s.cell]
    lines.append(f"There is {article(s.colour)} {s.colour} {s.kind} {where}.")
  kinds = collections.Counter(s.kind for s in scene.shapes)
  if n > 1:
    lines.append("In total there " + ("is " if kinds[sorted(kinds)[0]] == 1 else "are ")
                 + join_words([count_phrase(kinds[k], k) for k in sorted(kinds)]) + ".")
  empty = 9 - n
  lines.append(f"The other {count_phrase(empty, 'part')} of the image "
               f"{'is' if empty == 1 else 'are'} empty.")
  return " ".join(lines)


def shapes_questions(scene: scenes_lib.ShapesScene, rng: np.random.Generator) -> list[QA]:
  """Short factual Q&A pairs, all true; the caller picks a few for a conversation."""
  n = len(scene.shapes)
  counts = _type_counts(scene)
  qas = [
      ("What color is the background?", f"The background is {scene.background}."),
      ("How many shapes are there in the image?", f"{there_is(n, 'shape')} in the image."),
  ]
  for (colour, kind), k in sorted(counts.items()):
    qas.append((f"How many {colour} {kind}s are there?", f"{there_is(k, f'{colour} {kind}')}."))
    if k == 1:
      cell = next(s.cell for s in scene.shapes if (s.colour, s.kind) == (colour, kind))
      qas.append((f"Where is the {colour} {kind}?",
                  f"The {colour} {kind} is {scenes_lib.CELL_PHRASES[cell]}."))
  for s in scene.shapes:
    where = scenes_lib.CELL_PHRASES[s.cell]
    qas.append((f"What is {where} of the image?",
                f"There is {article(s.colour)} {s.colour} {s.kind} {where}."))
  empty_cells = [c for c in scenes_lib.CELL_PHRASES if c not in {s.cell for s in scene.shapes}]
  cell = empty_cells[int(rng.integers(len(empty_cells)))]
  qas.append((f"What is {scenes_lib.CELL_PHRASES[cell]} of the image?",
              f"There is nothing {scenes_lib.CELL_PHRASES[cell]}. That part of the image is "
              f"{scene.background}."))
  absent = [(c, k) for c in scenes_lib.OBJECT_COLOURS for k in scenes_lib.SHAPE_KINDS
            if (c, k) not in counts]
  colour, kind = absent[int(rng.integers(len(absent)))]
  qas.append((f"Is there {article(colour)} {colour} {kind} in the image?",
              f"No, there is no {colour} {kind} in the image."))
  colour, kind = sorted(counts)[int(rng.integers(len(counts)))]
  qas.append((f"Is there {article(colour)} {colour} {kind} in the image?",
              f"Yes, there {'is' if counts[(colour, kind)] == 1 else 'are'} "
              f"{count_phrase(counts[(colour, kind)], f'{colour} {kind}')} in the image."))
  return qas


def shapes_reasoning(scene: scenes_lib.ShapesScene, rng: np.random.Generator) -> QA:
  """One question that needs two facts combined, answered with the reasoning spelled out."""
  n = len(scene.shapes)
  colours = collections.Counter(s.colour for s in scene.shapes)
  kinds = collections.Counter(s.kind for s in scene.shapes)
  options = []
  for colour, k in sorted(colours.items()):
    left = n - k
    options.append((
        f"If all the {colour} shapes were removed, how many shapes would be left?",
        f"{there_is(n, 'shape')} and {NUMBER_WORDS[k]} of them "
        f"{'is' if k == 1 else 'are'} {colour}. If the {colour} shapes were removed, "
        + (f"{count_phrase(left, 'shape')} would be left." if left else
           "no shapes would be left and the image would be empty.")))
  if len(kinds) >= 2:
    a, b = rng.choice(sorted(kinds), size=2, replace=False)
    na, nb = kinds[a], kinds[b]
    verdict = ("Yes, there are more " + f"{a}s than {b}s." if na > nb else
               f"No, there are fewer {a}s than {b}s." if na < nb else
               f"No, there are as many {a}s as {b}s.")
    options.append((f"Are there more {a}s than {b}s in the image?",
                    f"{there_is(na, a)} and {count_phrase(nb, b)}. {verdict}"))
  # Above/below only between shapes that the text can name uniquely.
  counts = _type_counts(scene)
  unique = [s for s in scene.shapes if counts[(s.colour, s.kind)] == 1]
  rows = sorted({s.cell[0] for s in unique})
  if len(rows) >= 2:
    top = next(s for s in unique if s.cell[0] == rows[0])
    bottom = next(s for s in unique if s.cell[0] == rows[-1])
    options.append((f"Is the {top.colour} {top.kind} above or below the {bottom.colour} "
                    f"{bottom.kind}?",
                    f"The {top.colour} {top.kind} is {scenes_lib.CELL_PHRASES[top.cell]} and the "
                    f"{bottom.colour} {bottom.kind} is {scenes_lib.CELL_PHRASES[bottom.cell]}, so "
                    f"the {top.colour} {top.kind} is above the {bottom.colour} {bottom.kind}."))
  return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------- outdoor scenes


def _ground_phrase(ground: str) -> str:
  return {"grass": "green grass", "snow": "white snow", "sand": "yellow sand"}[ground]


def outdoor_caption(scene: scenes_lib.OutdoorScene) -> str:
  things = []
  if scene.house:
    things.append(f"a {scene.house} house")
  if scene.trees:
    things.append(a_or_count(scene.trees, "tree"))
  sky = "under a sunny blue sky" if scene.time == "day" else "at night under the moon and stars"
  text = join_words(things)
  return f"{text[0].upper() + text[1:]} on {_ground_phrase(scene.ground)} {sky}."


def outdoor_detail(scene: scenes_lib.OutdoorScene) -> str:
  side = scene.sky_light_side
  if scene.time == "day":
    lines = ["This is a picture of an outdoor scene during the day.",
             f"The sky is blue and the sun is shining in the top {side} corner."]
    if scene.clouds:
      lines.append(f"{there_is(scene.clouds, 'white cloud')} in the sky.")
    else:
      lines.append("There are no clouds in the sky.")
  else:
    lines = ["This is a picture of an outdoor scene at night.",
             f"The sky is dark blue, the moon is in the top {side} corner and small stars are "
             "shining."]
  lines.append(f"The ground is covered with {_ground_phrase(scene.ground)}.")
  if scene.house:
    lines.append(f"There is a {scene.house} house with a brown roof on the {scene.house_side}.")
  else:
    lines.append("There is no house in the picture.")
  if scene.trees:
    lines.append(f"{there_is(scene.trees, 'tree')} with "
                 + ("a brown trunk and green leaves." if scene.trees == 1 else
                    "brown trunks and green leaves."))
  else:
    lines.append("There are no trees.")
  return " ".join(lines)


def outdoor_questions(scene: scenes_lib.OutdoorScene) -> list[QA]:
  qas = [
      ("Is it day or night in the image?", f"It is {scene.time} in the image."),
      ("What covers the ground?", f"The ground is covered with {_ground_phrase(scene.ground)}."),
      ("How many trees are there?", f"{there_is(scene.trees, 'tree')}."),
      ("Is there a house in the image?",
       f"Yes, there is a {scene.house} house on the {scene.house_side}." if scene.house else
       "No, there is no house in the image."),
  ]
  if scene.house:
    qas.append(("What color is the house?", f"The house is {scene.house} with a brown roof."))
  if scene.time == "day":
    qas.append(("Where is the sun?", f"The sun is in the top {scene.sky_light_side} corner."))
    qas.append(("How many clouds are in the sky?",
                f"{there_is(scene.clouds, 'cloud')} in the sky."))
  else:
    qas.append(("Where is the moon?", f"The moon is in the top {scene.sky_light_side} corner."))
  return qas


def outdoor_reasoning(scene: scenes_lib.OutdoorScene, rng: np.random.Generator) -> QA:
  if scene.time == "day":
    light = ("Would you need a flashlight to walk here right now?",
             "No. It is daytime and the sun is shining, so there is enough light to see.")
  else:
    light = ("Would you need a flashlight to walk here right now?",
             "Yes. It is night and the sky is dark. Only the moon and the stars give some light, "
             "so a flashlight would help.")
  season = {
      "snow": "The ground is covered with white snow, so it is probably winter and it is cold.",
      "grass": "The grass is green and the trees have green leaves, so it is probably spring or "
               "summer." if scene.trees else
               "The grass is green, so it is probably spring or summer.",
      "sand": "The ground is yellow sand, so this could be a beach or a desert where it is warm.",
  }[scene.ground]
  options = [light, ("What season or place might this be?", season)]
  if scene.house:
    options.append(("Could someone live here?",
                    f"Yes. There is a {scene.house} house with a door on the {scene.house_side}, "
                    "so someone could live in it."))
  return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------- text-only records

TEXT_ONLY = (
    [("How many sides does a square have?", "A square has four sides."),
     ("And a triangle?", "A triangle has three sides.")],
    [("What color do you get if you mix blue and yellow?", "You get green.")],
    [("What color is the sky on a clear day?", "The sky is blue on a clear day.")],
    [("Can you see the sun at night?",
      "No. At night the sun is down, but you can often see the moon and the stars.")],
    [("Name three simple shapes.", "Three simple shapes are the circle, the square and the "
                                   "triangle.")],
    [("What color is snow?", "Snow is white."), ("What color is grass?", "Grass is green.")],
)
