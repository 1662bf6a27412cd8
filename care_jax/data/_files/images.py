"""The image files of the datasets built from files: reading, checking and storing them.

**Stored images.** Images are decoded (PNG/JPEG via PIL: 16-bit greyscale is
scaled by 1/257, alpha is dropped; EXIF orientation is ignored, boxes refer to
the stored pixel array), shrunk so that the longer side is at most
``stored_size`` (aspect kept, never enlarged; 0 keeps the original size), and
re-encoded (PNG or JPEG quality 95, per dataset). The input pipeline resizes
them to ``data.image_size`` on the fly.

**Segmentation masks** (`load_mask`): PNG or JPEG files of any size, decoded to
8-bit grey (16-bit scaled by 1/257, colour converted to luma as PIL's ``'L'``
mode does, alpha dropped); a pixel is lesion when its grey level is > 127
(`MASK_LEVEL`), so 0/255 masks (HAM10000's) read as they are, while 0/1 masks
read as empty, which is an error. A mask must have its image's aspect ratio
(up to the rounding of a resized copy, `mask_size_problem`). When stored it is
resized to the stored image's size as the image is (PIL bilinear, averaging
when it shrinks) and thresholded again at > 127.
"""

from collections.abc import Sequence
import io
import pathlib

import numpy as np
from PIL import Image

# A mask pixel is lesion when its 8-bit grey level is above this.
MASK_LEVEL = 127
_JPEG_QUALITY = 95


class UnreadableFile(ValueError):
  """An image (or mask, DICOM) file is missing, unreadable or unsupported."""


def image_header(path: pathlib.Path, *, kind: str = 'image') -> tuple[int, int]:
  """Returns (height, width) of a PNG or JPEG file, reading only its header.

  ``kind`` names the file in messages ('image', 'mask').

  Raises:
    UnreadableFile: the file is missing, not an image, or not PNG/JPEG.
  """
  try:
    with Image.open(path) as image:
      image_format, (width, height) = image.format, image.size
  except FileNotFoundError as e:
    raise UnreadableFile(f'{kind} file {path} does not exist') from e
  except (OSError, SyntaxError, ValueError) as e:
    raise UnreadableFile(f'cannot read {kind} {path}: {e}') from e
  if image_format not in ('PNG', 'JPEG'):
    raise UnreadableFile(f'{path} is a {image_format} {kind}; only PNG and JPEG are supported')
  return height, width


def image_index(directories: Sequence[pathlib.Path], pattern: str) -> dict[str, pathlib.Path]:
  """File name -> path of the files matching ``pattern`` in ``directories``.

  Directories that do not exist are passed over; a name in several of them
  is taken from the first.
  """
  index = {}
  for directory in directories[::-1]:  # The first directory wins.
    if directory.is_dir():
      index.update({p.name: p for p in directory.glob(pattern)})
  return index


def _to_rgb(image: Image.Image) -> np.ndarray:
  if image.mode.startswith('I;16') or image.mode == 'I':
    # 16-bit greyscale PNG: 65535 -> 255 (x / 257 maps 257 k exactly to k).
    grey = np.clip(np.asarray(image, np.float64), 0, 65535) / 257.0
    grey = np.round(grey).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == 'L':
    return np.repeat(np.asarray(image)[..., None], 3, axis=-1)
  return np.asarray(image.convert('RGB'))


def load_rgb(path: pathlib.Path) -> np.ndarray:
  """Decodes a PNG or JPEG file to uint8 [H, W, 3] (see module docstring).

  Raises:
    UnreadableFile: the file is missing or its data are corrupt/truncated.
  """
  try:
    with Image.open(path) as image:
      image.load()  # The full decode: corrupt or truncated data fail here.
      return _to_rgb(image)
  except FileNotFoundError as e:
    raise UnreadableFile(f'image file {path} does not exist') from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableFile(f'cannot decode image {path}: {e}') from e


def load_mask(path: pathlib.Path) -> np.ndarray:
  """Decodes a segmentation mask file to bool [H, W], True = lesion.

  Lesion pixels have an 8-bit grey level > `MASK_LEVEL` (see the module
  docstring for the conversion to grey).

  Raises:
    UnreadableFile: the file is missing, corrupt, not PNG/JPEG, or has no
      lesion pixel.
  """
  try:
    with Image.open(path) as image:
      if image.format not in ('PNG', 'JPEG'):
        raise UnreadableFile(f'{path} is a {image.format} mask; only PNG and JPEG are supported')
      image.load()
      if image.mode.startswith('I;16') or image.mode == 'I':
        grey = np.round(np.clip(np.asarray(image, np.float64), 0, 65535) / 257.0)
      else:
        grey = np.asarray(image.convert('L'))
  except FileNotFoundError as e:
    raise UnreadableFile(f'mask {path} does not exist') from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, UnreadableFile):
      raise
    raise UnreadableFile(f'cannot decode mask {path}: {e}') from e
  mask = grey > MASK_LEVEL
  if not mask.any():
    raise UnreadableFile(
      f'mask {path} is empty: no pixel above {MASK_LEVEL} (lesion pixels are > {MASK_LEVEL}'
      ' of 255; scale a 0/1 mask to 0/255)'
    )
  return mask


def mask_size_problem(mask_size: tuple[int, int], image_size: tuple[int, int]) -> str | None:
  """Why a mask of (height, width) ``mask_size`` does not fit its image, or None.

  A mask of any size fits when it has the image's aspect ratio up to the
  rounding of a resized copy: ``|h W - w H| <= max(H + W, h + w) / 2``.
  """
  (h, w), (height, width) = mask_size, image_size
  if abs(h * width - w * height) <= max(height + width, h + w) / 2:
    return None
  return (
    f'the mask is {w}x{h}, which is not the aspect ratio of its {width}x{height} image'
    ' (width x height)'
  )


def stored_mask(mask: np.ndarray, size: tuple[int, int]) -> bytes:
  """bool [h, w] -> PNG bytes of uint8 [H, W] (255 = lesion) at ``size`` (H, W).

  Resized as `shrink` resizes images (PIL bilinear, which averages when it
  shrinks), then thresholded at > `MASK_LEVEL`.
  """
  grey = mask.astype(np.uint8) * 255
  if grey.shape != tuple(size):
    resized = Image.fromarray(grey, mode='L').resize((size[1], size[0]), Image.Resampling.BILINEAR)
    grey = (np.asarray(resized) > MASK_LEVEL).astype(np.uint8) * 255
  buffer = io.BytesIO()
  Image.fromarray(grey, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def shrink(image: np.ndarray, stored_size: int) -> np.ndarray:
  """Shrinks uint8 [H, W, 3] so that max(H, W) <= stored_size (0: as is).

  PIL's bilinear filter widens with the scale factor, so shrinking averages
  instead of aliasing. The aspect ratio is kept (sides rounded).
  """
  height, width = image.shape[:2]
  if not stored_size or max(height, width) <= stored_size:
    return image
  scale = stored_size / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  resized = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
  return np.asarray(resized)


def encode(image: np.ndarray, encoding: str) -> bytes:
  """uint8 [H, W, 3] -> PNG or JPEG (quality 95) bytes."""
  buffer = io.BytesIO()
  if encoding == 'png':
    Image.fromarray(image).save(buffer, format='PNG')
  else:
    Image.fromarray(image).save(buffer, format='JPEG', quality=_JPEG_QUALITY)
  return buffer.getvalue()
