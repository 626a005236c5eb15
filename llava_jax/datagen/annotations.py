"""Image annotations (captions + object boxes) from COCO files or a simple JSONL.

Two inputs give the same `ImageAnnotation` list:
- COCO: a captions file (`captions_*.json`) and optionally an instances file
  (`instances_*.json`, boxes `[x, y, w, h]` in pixels, categories by id).
- JSONL, one image per line: `{"image": "a.jpg", "id"?: ..., "captions": [...],
  "boxes": [{"category": "dog", "bbox": [x1, y1, x2, y2]}], "width"?: W, "height"?: H}`.
  A bbox whose values all lie in [0, 1] is taken as already normalized; otherwise it is in
  pixels and is normalized by the record's `width`/`height`, or the image file's size.
"""

import dataclasses
import json
import os
from typing import Sequence

from PIL import Image

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class ImageAnnotation:
  id: str
  image: str                                  # path relative to the images directory
  captions: tuple[str, ...]
  boxes: tuple[tuple[str, Box], ...] = ()     # (category, normalized [x1, y1, x2, y2])


def load(paths: Sequence[str], images_dir: str | None = None) -> list[ImageAnnotation]:
  """Reads one `.jsonl` file, or COCO captions (+ instances) `.json` files, from `paths`."""
  if len(paths) == 1 and paths[0].endswith(".jsonl"):
    return load_jsonl(paths[0], images_dir)
  by_kind: dict[str, list] = {"captions": [], "instances": []}
  for path in paths:
    with open(path) as f:
      data = json.load(f)
    by_kind[_coco_kind(data, path)].append(data)
  if len(by_kind["captions"]) != 1 or len(by_kind["instances"]) > 1:
    raise ValueError(f"{list(paths)}: expected one COCO captions file and at most one "
                     "instances file (or a single .jsonl file)")
  return from_coco(by_kind["captions"][0], (by_kind["instances"] or [None])[0])


def from_coco(caps: dict, inst: dict | None = None) -> list[ImageAnnotation]:
  """Joins COCO captions and instances by image id; images without captions are dropped."""
  images = {im["id"]: im for im in caps["images"]}
  captions: dict[int, list[str]] = {}
  for ann in caps["annotations"]:
    captions.setdefault(ann["image_id"], []).append(" ".join(ann["caption"].split()))
  boxes: dict[int, list] = {}
  if inst is not None:
    names = {c["id"]: c["name"] for c in inst["categories"]}
    for ann in inst["annotations"]:
      image = images.get(ann["image_id"])
      if image is None:
        continue
      x, y, w, h = ann["bbox"]
      box = normalize_box((x, y, x + w, y + h), image["width"], image["height"])
      boxes.setdefault(ann["image_id"], []).append((names[ann["category_id"]], box))
  out = []
  for image_id, image in images.items():
    if image_id not in captions:
      continue
    out.append(ImageAnnotation(
        id=os.path.splitext(image["file_name"])[0], image=image["file_name"],
        captions=tuple(captions[image_id]), boxes=tuple(boxes.get(image_id, ()))))
  return out


def load_jsonl(path: str, images_dir: str | None = None) -> list[ImageAnnotation]:
  out = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from e
      out.append(_from_record(rec, where, images_dir))
  return out


def _from_record(rec: dict, where: str, images_dir: str | None) -> ImageAnnotation:
  image = rec.get("image")
  if not isinstance(image, str) or not image:
    raise ValueError(f"{where}: field 'image' must be a non-empty string")
  captions = rec.get("captions")
  if (not isinstance(captions, list) or not captions
      or not all(isinstance(c, str) and c.strip() for c in captions)):
    raise ValueError(f"{where}: field 'captions' must be a non-empty list of strings")
  size = None
  boxes = []
  for i, b in enumerate(rec.get("boxes") or []):
    bbox = b.get("bbox") if isinstance(b, dict) else None
    if (not isinstance(b.get("category"), str) or not isinstance(bbox, list) or len(bbox) != 4
        or not all(isinstance(v, (int, float)) for v in bbox)):
      raise ValueError(f"{where}: boxes[{i}] must be {{'category': str, 'bbox': [x1,y1,x2,y2]}}")
    if all(0.0 <= v <= 1.0 for v in bbox):
      box = tuple(round(float(v), 3) for v in bbox)
    else:
      size = size or _image_size(rec, where, images_dir)
      box = normalize_box(bbox, *size)
    boxes.append((b["category"], box))
  image_id = rec.get("id", os.path.splitext(os.path.basename(image))[0])
  return ImageAnnotation(id=str(image_id), image=image,
                         captions=tuple(" ".join(c.split()) for c in captions),
                         boxes=tuple(boxes))


def _image_size(rec: dict, where: str, images_dir: str | None) -> tuple[int, int]:
  if isinstance(rec.get("width"), int) and isinstance(rec.get("height"), int):
    return rec["width"], rec["height"]
  if images_dir is None:
    raise ValueError(f"{where}: pixel boxes need 'width'/'height' or --images to read the size")
  path = os.path.join(images_dir, rec["image"])
  try:
    with Image.open(path) as im:  # Reads the header only.
      return im.size
  except OSError as e:
    raise ValueError(f"{where}: cannot read the size of image {path}: {e}") from e


def normalize_box(xyxy: Sequence[float], width: int, height: int) -> Box:
  """Pixel `[x1, y1, x2, y2]` → fractions of the image size, clipped, 3 decimals (as LLaVA)."""
  x1, y1, x2, y2 = xyxy
  clip = lambda v: min(1.0, max(0.0, v))
  return (round(clip(x1 / width), 3), round(clip(y1 / height), 3),
          round(clip(x2 / width), 3), round(clip(y2 / height), 3))


def _coco_kind(data, path: str) -> str:
  """'captions' | 'instances' for a parsed COCO annotation file."""
  anns = data.get("annotations") if isinstance(data, dict) else None
  if anns and "caption" in anns[0]:
    return "captions"
  if anns and "bbox" in anns[0]:
    return "instances"
  raise ValueError(f"{path}: not a COCO captions or instances file (no 'annotations' with "
                   "'caption' or 'bbox'); a JSONL annotation file must end in .jsonl")
