"""Plain image files (PNG, JPEG, TIFF, BMP) to the same grey [0, 1] images as DICOM (Pillow; nothing unpickled)."""

from __future__ import annotations

import io
import warnings

import numpy as np

from medrobust.data.dicom import MAX_PIXELS, array_to_image
from medrobust.data.sources.base import Rejected


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PNG/JPEG/TIFF/BMP file's bytes -> grey float image in [0, 1], resized (Pillow, no pickle).

    8-bit images are scaled by 1/255, 16/32-bit integer ones by 1/65535 (1/255 when no value exceeds 255),
    float (``F``) ones are taken as they are; other modes (palette, CMYK...) are converted to RGB, and colour
    becomes BT.601 luma (:func:`array_to_image`).

    Args:
        data: the file's bytes.
        size: the output side length in pixels.
        max_pixels: ``data.max_pixels``: a larger image is refused from its header, before one pixel
            is decoded (a 258 KB PNG can declare 9400 x 9400 pixels: a decompression bomb). Pillow's own
            ``MAX_IMAGE_PIXELS`` is set to it too, so a frame of a multi-image file is held to the same limit.

    Returns:
        float32, (size, size), in [0, 1].

    Raises:
        Rejected: ``empty_file``, ``unreadable`` (not an image Pillow can read), ``truncated``,
            ``too_large``, or a reason of :func:`array_to_image`.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise Rejected("empty_file", "the file has zero bytes")
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns above this and raises above twice this
    try:
        with warnings.catch_warnings():  # the warning's case is refused just below, by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise Rejected("too_large", f"the image declares {width} x {height} pixels, more than "
                                            f"data.max_pixels ({max_pixels}); raise it if this is real")
            im.load()
            arr = _pil_to_float(im)
    except UnidentifiedImageError:
        raise Rejected("unreadable", "not an image Pillow can read (PNG, JPEG, TIFF, BMP)") from None
    except Image.DecompressionBombError as exc:
        raise Rejected("too_large", f"{exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected("truncated" if "truncated" in str(exc).lower() else "unreadable",
                       f"{type(exc).__name__}: {exc}") from None
    return array_to_image(arr, size)


def _pil_to_float(im: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(im, Image.Image)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        return a / (65535.0 if a.max() > 255 else 255.0)
    if im.mode in ("F",):
        return np.asarray(im, dtype=np.float64)
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    a = np.asarray(im, dtype=np.float64) / 255.0
    return a


__all__ = ["decode_image"]
