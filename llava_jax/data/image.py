"""Image decoding and CLIP preprocessing (numpy + Pillow; no JAX, safe in Grain workers).

Decoding (`load_image`, `decode_image`):
- The format is detected from the content, never from the file name. A file whose content does
  not match its extension (a GIF named `.jpg`) is rejected by default with an `ImageError` of kind
  `format_mismatch`: in web-scraped data it usually means a wrong or broken download, and the
  pipeline then skips it in `skip` mode or stops in `strict` mode. Pass
  `allow_format_mismatch=True` to accept such files (decoded by content; first frame of an
  animation).
- EXIF orientation is applied (`ImageOps.exif_transpose`), so phone photos are upright.
- Modes are converted like LLaVA's training code, `Image.convert("RGB")`: grayscale is replicated,
  palette is looked up, and alpha is dropped (not composited on white as transformers'
  `convert_to_rgb` does; LLaVA converts before its processor ever sees the alpha channel).
  16-bit grayscale is scaled to 8 bits first (PIL would clip it to white).
- Every failure raises `ImageError(source, kind, reason)`; `kind` is one of `IMAGE_ERROR_KINDS`.
  Only regular files are read (a FIFO never hangs a worker). The geometry is checked from the
  header before decoding (`check_geometry`): over Pillow's decompression-bomb limit
  (`Image.MAX_IMAGE_PIXELS`, ~89 Mpx) or thinner than 1:`MAX_ASPECT_RATIO` is refused.
  Unreadable EXIF metadata is ignored (the picture is kept as stored).

Preprocessing (`preprocess`): transformers' `CLIPImageProcessor` step for step: bicubic resize of
the shortest side (PIL), center crop, rescale by 1/255, normalize with CLIP's mean/std. Mode `pad`
first expands to a square with the mean colour, as LLaVA-1.5's `expand2square`; it resizes only
the band of that square the picture touches (`pad_and_resize`), so a thin image never
materializes a full-size square.
"""

from collections.abc import Sequence
import io
import math
import os
import stat
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# LLaVA-1.5 pads with tuple(int(x * 255) for x in image_mean).
CLIP_MEAN_RGB = tuple(int(m * 255) for m in CLIP_MEAN)

PREPROCESS_MODES = ("pad", "crop")
IMAGE_ERROR_KINDS = ("missing_image", "empty_image", "format_mismatch", "truncated_image",
                     "undecodable_image", "image_too_large", "bad_geometry", "not_a_file",
                     "unreadable_image", "bad_image_path")
# Longest side / shortest side. Thinner images hold next to nothing once fit into a square (a
# 10000x10 strip pads to a 336x0.3 band) and would cost a huge crop in mode "crop".
MAX_ASPECT_RATIO = 50

# Pillow warns between 1x and 2x its pixel limit and raises above; as its docs advise, make the
# warning an error so every image over the limit is refused the same way.
warnings.simplefilter("error", Image.DecompressionBombWarning)

# File extension -> the Pillow formats its content may have (MPO: multi-picture JPEG from cameras).
_EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".jpe": ("JPEG", "MPO"),
    ".png": ("PNG",), ".gif": ("GIF",), ".webp": ("WEBP",), ".bmp": ("BMP",),
    ".tif": ("TIFF",), ".tiff": ("TIFF",),
}


class ImageError(ValueError):
  """An image that cannot be used; names the file (or record source) and why."""

  def __init__(self, source: str, kind: str, reason: str):
    super().__init__(f"{source}: {reason}")
    self.source = source
    self.kind = kind
    self.reason = reason


def load_image(path: str | os.PathLike, *, allow_format_mismatch: bool = False) -> np.ndarray:
  """Reads and decodes an image file. Returns uint8[H, W, 3]; raises ImageError (only)."""
  path = os.fspath(path)
  return decode_image(read_image_file(path), name=path,
                      allow_format_mismatch=allow_format_mismatch)


def read_image_file(path: str) -> bytes:
  """The bytes of a regular file; ImageError for anything else (missing, FIFO, bad name...).

  Opened non-blocking and checked with fstat before reading, so a FIFO or device never hangs.
  """
  try:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
  except FileNotFoundError:
    raise ImageError(path, "missing_image", "image file not found") from None
  except ValueError as e:   # a NUL byte in the name
    raise ImageError(repr(path), "bad_image_path", f"not a usable file name ({e})") from None
  except OSError as e:      # directory, permission, name too long, loops, ...
    raise ImageError(path, "unreadable_image",
                     f"cannot open image file ({e.strerror or e})") from None
  try:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      raise ImageError(path, "not_a_file", "not a regular file (a FIFO, socket or device)")
    with os.fdopen(fd, "rb", closefd=False) as f:
      return f.read()
  except OSError as e:
    raise ImageError(path, "unreadable_image", f"cannot read image file ({e.strerror or e})"
                     ) from None
  finally:
    os.close(fd)


def check_image_file(path: str) -> None:
  """Without reading it: ImageError unless `path` names a non-empty regular file."""
  try:
    info = os.stat(path)
  except FileNotFoundError:
    raise ImageError(path, "missing_image", "image file not found") from None
  except ValueError as e:
    raise ImageError(repr(path), "bad_image_path", f"not a usable file name ({e})") from None
  except OSError as e:
    raise ImageError(path, "unreadable_image", f"cannot stat image file ({e.strerror or e})"
                     ) from None
  if not stat.S_ISREG(info.st_mode):
    raise ImageError(path, "not_a_file", "not a regular file (a directory, FIFO, socket or "
                     "device)")
  if info.st_size == 0:
    raise ImageError(path, "empty_image", "image file is empty (0 bytes)")


def check_geometry(width: int, height: int, name: str = "<image>") -> None:
  """Refuses sizes no model input should come from, before any pixel is decoded or resized:
  over `Image.MAX_IMAGE_PIXELS` (decompression bombs) or thinner than 1:MAX_ASPECT_RATIO."""
  if width < 1 or height < 1:
    raise ImageError(name, "bad_geometry", f"{width}x{height} pixels has no area")
  limit = Image.MAX_IMAGE_PIXELS
  if limit and width * height > limit:
    raise ImageError(name, "image_too_large", f"{width}x{height} pixels is over Pillow's "
                     f"decompression-bomb limit (Image.MAX_IMAGE_PIXELS={limit})")
  if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
    raise ImageError(name, "bad_geometry", f"{width}x{height} pixels is thinner than "
                     f"1:{MAX_ASPECT_RATIO} (image.MAX_ASPECT_RATIO)")


def decode_image(data: bytes, *, name: str = "<bytes>",
                 allow_format_mismatch: bool = False) -> np.ndarray:
  """Decodes encoded image bytes. `name` (a file name) is used for errors and the format check.

  The geometry (`check_geometry`) is read from the header and checked before decoding. Any
  failure of the decoder, whatever its exception type, becomes an ImageError.

  Returns:
    uint8[H, W, 3], upright (EXIF orientation applied), RGB.
  """
  if not data:
    raise ImageError(name, "empty_image", "image file is empty (0 bytes)")
  try:
    image = Image.open(io.BytesIO(data))
    _check_format(image.format, name, allow_format_mismatch)
    check_geometry(image.width, image.height, name)
    image.load()  # Decode now: truncated data fails here, not later in a worker.
  except ImageError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(name, "image_too_large", str(e)) from None
  except UnidentifiedImageError:
    raise ImageError(name, "undecodable_image",
                     "not a readable image (unknown format or corrupt header)") from None
  except Exception as e:  # noqa: BLE001 - corrupt data raises many types; all mean "unusable".
    kind = "truncated_image" if "truncated" in str(e).lower() else "undecodable_image"
    raise ImageError(name, kind, f"cannot decode image: {type(e).__name__}: {e}") from None
  try:
    image = ImageOps.exif_transpose(image)
  except Exception:  # noqa: BLE001 - broken EXIF must not lose a decodable picture.
    pass
  try:
    return to_rgb_array(image)
  except Exception as e:  # noqa: BLE001 - an odd mode must name the image, not crash a worker.
    raise ImageError(name, "undecodable_image",
                     f"cannot convert {image.mode} to RGB: {type(e).__name__}: {e}") from None


def _check_format(detected: str | None, name: str, allow_mismatch: bool) -> None:
  expected = _EXTENSION_FORMATS.get(os.path.splitext(name)[1].lower())
  if allow_mismatch or expected is None or detected in expected:
    return
  raise ImageError(name, "format_mismatch",
                   f"content is {detected} but the extension says {expected[0]}")


def check_rgb_uint8(image_HxWx3: np.ndarray, name: str = "image") -> None:
  """ValueError naming `name` unless the array is uint8[H, W, 3] (the one such check)."""
  if image_HxWx3.dtype != np.uint8 or image_HxWx3.ndim != 3 or image_HxWx3.shape[-1] != 3:
    raise ValueError(f"{name}: expected a PIL image or uint8[H, W, 3], got "
                     f"{image_HxWx3.dtype}{list(image_HxWx3.shape)}")


def as_rgb_array(image, name: str = "image") -> np.ndarray:
  """uint8[H, W, 3] from a PIL image (any mode, via `to_rgb_array`) or an array (checked)."""
  if isinstance(image, Image.Image):
    return to_rgb_array(image)
  image = np.asarray(image)
  check_rgb_uint8(image, name)
  return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
  """Any Pillow mode -> uint8[H, W, 3] the way LLaVA does it (`convert("RGB")`, alpha dropped)."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    wide = np.asarray(image, dtype=np.float64)
    scale = 255.0 / 65535.0 if wide.max(initial=0) > 255 else 1.0
    image = Image.fromarray(np.clip(np.round(wide * scale), 0, 255).astype(np.uint8), mode="L")
  elif image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")  # Same colours as convert("RGB"), without Pillow's warning.
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def expand_to_square(image_HxWx3: np.ndarray, fill: Sequence[int] = CLIP_MEAN_RGB) -> np.ndarray:
  """LLaVA-1.5's expand2square: pad the short side (centred, floor offset) with `fill`."""
  h, w, _ = image_HxWx3.shape
  if h == w:
    return image_HxWx3
  side = max(h, w)
  out = np.empty((side, side, 3), dtype=image_HxWx3.dtype)
  out[...] = np.asarray(fill, dtype=image_HxWx3.dtype)
  top, left = (side - h) // 2, (side - w) // 2
  out[top:top + h, left:left + w] = image_HxWx3
  return out


def resize_shortest_side(image_HxWx3: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize (Pillow) so the short side is `size`; long side int(size * long / short)."""
  h, w, _ = image_HxWx3.shape
  if h <= w:
    new_h, new_w = size, int(size * w / h)
  else:
    new_h, new_w = int(size * h / w), size
  if (new_h, new_w) == (h, w):
    return image_HxWx3
  resized = Image.fromarray(image_HxWx3).resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
  return np.asarray(resized)


def center_crop(image_HxWx3: np.ndarray, size: int) -> np.ndarray:
  """Crop the central size x size window (floor offsets, as transformers)."""
  h, w, _ = image_HxWx3.shape
  if h < size or w < size:
    raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {size}")
  top, left = (h - size) // 2, (w - size) // 2
  return image_HxWx3[top:top + size, left:left + size]


def normalize(images_xHxWx3: np.ndarray) -> np.ndarray:
  """uint8[..., H, W, 3] -> float32 rescaled to [0, 1], normalized with CLIP's mean and std.

  The one normalization: training batches, inference and the server all come here. One
  multiply and one add per value ((x / 255 - mean) / std folded together).
  """
  std = np.asarray(CLIP_STD, np.float32)
  scale = np.float32(1 / 255) / std
  offset = -np.asarray(CLIP_MEAN, np.float32) / std
  # Rows of W*3 values, so numpy's inner loops are long (a trailing axis of 3 is slow).
  row = images_xHxWx3.shape[-2] * 3
  out = images_xHxWx3.astype(np.float32)
  flat = out.reshape(-1, row)
  flat *= np.tile(scale, row // 3)
  flat += np.tile(offset, row // 3)
  return out


def unnormalize(pixels_HxWx3: np.ndarray) -> np.ndarray:
  """Inverse of `normalize`, back to uint8 (for looking at what the model sees)."""
  x = pixels_HxWx3 * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def pad_and_resize(image_HxWx3: np.ndarray, size: int,
                   fill: Sequence[int] = CLIP_MEAN_RGB) -> np.ndarray:
  """uint8[size, size, 3]: `expand_to_square` then a bicubic resize to `size`, computing only
  the rows (or columns) of the output the picture reaches; the rest is `fill`.

  Pillow resamples each output pixel from a window of +-2 * (side / size) source pixels, so the
  band of the square within that reach of the picture gives the same output rows (to rounding:
  at most 1 level, in a few pixels in 10^4) as resizing the whole square, at a cost
  proportional to the picture. Pictures at least half as high as wide (and vice versa) take
  the whole square, exactly as LLaVA.
  """
  h, w, _ = image_HxWx3.shape
  side = max(h, w)
  # Where the square costs little more than the picture, resize it whole: bit-exact LLaVA.
  if side <= size or side * side <= 4 * h * w:
    return resize_shortest_side(expand_to_square(image_HxWx3, fill), size)
  axis = 0 if h < w else 1               # the short axis, padded in the square
  short, start = (h, (side - h) // 2) if axis == 0 else (w, (side - w) // 2)
  scale = side / size
  reach = 2.0 * scale + 2                # bicubic support widened by the downscale, + margin
  first = max(0, math.floor((start - reach) / scale))
  last = min(size, math.ceil((start + short + reach) / scale))
  lo = max(0, math.floor(first * scale - reach))
  hi = min(side, math.ceil(last * scale + reach))
  band_shape = (hi - lo, side, 3) if axis == 0 else (side, hi - lo, 3)
  band = np.empty(band_shape, np.uint8)
  band[...] = np.asarray(fill, np.uint8)
  if axis == 0:
    band[start - lo:start - lo + h] = image_HxWx3
    box, out_size = (0, first * scale - lo, side, last * scale - lo), (size, last - first)
  else:
    band[:, start - lo:start - lo + w] = image_HxWx3
    box, out_size = (first * scale - lo, 0, last * scale - lo, side), (last - first, size)
  resized = np.asarray(Image.fromarray(band).resize(out_size, resample=Image.Resampling.BICUBIC,
                                                     box=box))
  out = np.empty((size, size, 3), np.uint8)
  out[...] = np.asarray(fill, np.uint8)
  if axis == 0:
    out[first:last] = resized
  else:
    out[:, first:last] = resized
  return out


def resize_and_crop(image_HxWx3: np.ndarray, size: int, mode: str = "pad",
                    name: str = "<image>") -> np.ndarray:
  """The uint8 part of `preprocess`: geometry check, then pad + resize or resize + crop.

  Returns uint8[size, size, 3]; ImageError for a geometry `check_geometry` refuses.
  """
  if mode not in PREPROCESS_MODES:
    raise ValueError(f"preprocess: mode must be one of {PREPROCESS_MODES}, got {mode!r}")
  check_rgb_uint8(image_HxWx3, f"preprocess: {name}")
  check_geometry(image_HxWx3.shape[1], image_HxWx3.shape[0], name)
  if mode == "pad":
    return pad_and_resize(image_HxWx3, size)
  return center_crop(resize_shortest_side(image_HxWx3, size), size)


def preprocess(image_HxWx3: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
  """CLIP preprocessing of one uint8[H, W, 3] image.

  Args:
    image_HxWx3: uint8 RGB image.
    size: output side (the vision tower's image_size).
    mode: "crop" (CLIP: shortest side -> size, center crop) or "pad" (LLaVA-1.5: expand to a
      square with the mean colour first, so nothing is cut away).

  Returns:
    float32[size, size, 3], CLIP-normalized. ImageError for a refused geometry.
  """
  return normalize(resize_and_crop(image_HxWx3, size, mode))


def preprocess_batch(images: Sequence[np.ndarray], size: int, mode: str = "pad",
                     max_images: int | None = None) -> np.ndarray:
  """Preprocesses a sample's images into float32[M, size, size, 3], zero-filled past len(images).

  `max_images` (M) defaults to len(images); more images than M is an error.
  """
  m = len(images) if max_images is None else max_images
  if len(images) > m:
    raise ValueError(f"preprocess_batch: {len(images)} images but max_images={m}")
  out = np.zeros((m, size, size, 3), np.float32)
  for i, image in enumerate(images):
    out[i] = preprocess(image, size, mode)
  return out
