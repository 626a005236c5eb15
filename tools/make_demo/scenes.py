"""Procedural demo images whose content is known exactly, so every caption and answer is true.

Two kinds of picture, both drawn with Pillow from a seeded numpy RNG:
- `ShapesScene`: 1-4 coloured circles/squares/triangles on a plain background, each in one cell
  of a 3x3 grid (so positions can be named: "in the top left corner", "in the middle", ...).
- `OutdoorScene`: sky (day or night), ground (grass, snow or sand), sun or moon and stars,
  clouds, trees and at most one house.

Objects are drawn large (>= 28 px on a 128 px canvas) so they stay visible at the tiny model's
64 px input.
"""

import dataclasses

import numpy as np
from PIL import Image
from PIL import ImageDraw

CANVAS = 128

OBJECT_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
BACKGROUNDS = {"white": (255, 255, 255), "gray": (150, 150, 150), "black": (20, 20, 20)}
SHAPE_KINDS = ("circle", "square", "triangle")

# Grid cell (row, col) -> how the text names it.
CELL_PHRASES = {
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "in the middle", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}

SKY = {"day": (110, 170, 235), "night": (20, 25, 70)}
GROUNDS = {"grass": (70, 160, 60), "snow": (240, 240, 245), "sand": (220, 190, 120)}
HOUSE_COLOURS = {"red": (200, 40, 40), "blue": (40, 80, 200), "yellow": (230, 200, 40)}
HORIZON = 80  # y of the line between sky and ground


@dataclasses.dataclass(frozen=True)
class Shape:
  kind: str    # one of SHAPE_KINDS
  colour: str  # key of OBJECT_COLOURS
  cell: tuple[int, int]  # (row, col) in the 3x3 grid


@dataclasses.dataclass(frozen=True)
class ShapesScene:
  background: str
  shapes: tuple[Shape, ...]


@dataclasses.dataclass(frozen=True)
class OutdoorScene:
  time: str            # "day" | "night"
  ground: str          # key of GROUNDS
  clouds: int          # 0-2, day only
  trees: int           # 0-3
  house: str | None    # key of HOUSE_COLOURS, or None
  house_side: str      # "left" | "right" (meaningful only with a house)
  sky_light_side: str  # where the sun or moon is: "left" | "right"


def random_shapes_scene(rng: np.random.Generator) -> ShapesScene:
  """1-4 shapes in distinct cells; a few (colour, kind) types repeated so counting matters."""
  background = str(rng.choice(list(BACKGROUNDS)))
  count = int(rng.integers(1, 5))
  cells = [divmod(int(i), 3) for i in rng.choice(9, size=count, replace=False)]
  num_types = int(rng.integers(1, min(count, 3) + 1))
  types = set()
  while len(types) < num_types:
    types.add((str(rng.choice(SHAPE_KINDS)), str(rng.choice(list(OBJECT_COLOURS)))))
  types = sorted(types)
  # Every type appears at least once; the rest are drawn at random.
  assignment = list(range(num_types)) + [int(rng.integers(num_types))
                                         for _ in range(count - num_types)]
  shapes = tuple(Shape(types[t][0], types[t][1], cell) for t, cell in zip(assignment, cells))
  return ShapesScene(background, tuple(sorted(shapes, key=lambda s: s.cell)))


def random_outdoor_scene(rng: np.random.Generator, time: str, ground: str) -> OutdoorScene:
  has_house = bool(rng.integers(2))
  return OutdoorScene(
      time=time,
      ground=ground,
      clouds=int(rng.integers(0, 3)) if time == "day" else 0,
      trees=int(rng.integers(0, 4)) if has_house else int(rng.integers(1, 4)),
      house=str(rng.choice(list(HOUSE_COLOURS))) if has_house else None,
      house_side=str(rng.choice(["left", "right"])),
      sky_light_side=str(rng.choice(["left", "right"])),
  )


def cell_centre(cell: tuple[int, int]) -> tuple[float, float]:
  """Pixel centre (x, y) of grid cell (row, col) of the 3x3 shapes canvas."""
  row, col = cell
  step = CANVAS / 3
  return (col + 0.5) * step, (row + 0.5) * step


def draw_shapes(scene: ShapesScene) -> Image.Image:
  image = Image.new("RGB", (CANVAS, CANVAS), BACKGROUNDS[scene.background])
  draw = ImageDraw.Draw(image)
  r = 15
  for shape in scene.shapes:
    x, y = cell_centre(shape.cell)
    fill = OBJECT_COLOURS[shape.colour]
    if shape.kind == "circle":
      draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape.kind == "square":
      draw.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=fill)
    else:
      draw.polygon([(x, y - r - 1), (x - r - 1, y + r - 1), (x + r + 1, y + r - 1)], fill=fill)
  return image


def _ground_slots(scene: OutdoorScene) -> tuple[float | None, list[float]]:
  """x centres of the house (or None) and of each tree, left to right, no overlaps."""
  slots = [18.0, 46.0, 82.0, 110.0]
  if scene.house is None:
    return None, [slots[i] for i in (1, 2, 3, 0)[:scene.trees]]
  house_x, free = (26.0, [84.0, 110.0, 60.0]) if scene.house_side == "left" else (
      102.0, [44.0, 18.0, 66.0])
  return house_x, free[:scene.trees]


def draw_outdoor(scene: OutdoorScene, rng: np.random.Generator) -> Image.Image:
  image = Image.new("RGB", (CANVAS, CANVAS), SKY[scene.time])
  draw = ImageDraw.Draw(image)
  draw.rectangle([0, HORIZON, CANVAS, CANVAS], fill=GROUNDS[scene.ground])
  light_x = 24 if scene.sky_light_side == "left" else CANVAS - 24
  if scene.time == "day":
    draw.ellipse([light_x - 13, 11, light_x + 13, 37], fill=(250, 220, 40))
    for i in range(scene.clouds):
      cx = (CANVAS - 36 - 28 * i) if scene.sky_light_side == "left" else (36 + 28 * i)
      cy = 22 + 14 * i
      draw.ellipse([cx - 16, cy - 7, cx + 16, cy + 7], fill=(250, 250, 250))
  else:
    draw.ellipse([light_x - 11, 13, light_x + 11, 35], fill=(235, 235, 215))
    for _ in range(12):
      sx, sy = int(rng.integers(4, CANVAS - 4)), int(rng.integers(4, HORIZON - 6))
      if abs(sx - light_x) > 16:
        draw.rectangle([sx, sy, sx + 1, sy + 1], fill=(255, 255, 230))
  house_x, tree_xs = _ground_slots(scene)
  if house_x is not None:
    draw.rectangle([house_x - 17, HORIZON - 4, house_x + 17, HORIZON + 26],
                   fill=HOUSE_COLOURS[scene.house])
    draw.polygon([(house_x - 22, HORIZON - 4), (house_x, HORIZON - 24),
                  (house_x + 22, HORIZON - 4)],
                 fill=(110, 60, 30))
    draw.rectangle([house_x - 4, HORIZON + 12, house_x + 4, HORIZON + 26], fill=(70, 40, 20))
  crown = (20, 110, 40) if scene.ground != "grass" else (15, 95, 30)
  for x in tree_xs:
    draw.rectangle([x - 3, HORIZON - 2, x + 3, HORIZON + 22], fill=(110, 70, 30))
    draw.ellipse([x - 12, HORIZON - 30, x + 12, HORIZON + 2], fill=crown)
  return image
