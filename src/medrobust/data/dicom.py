"""Decode one DICOM object (or a plain image) to a display-ready float image in [0, 1], or say
precisely why not.

The chain follows the DICOM standard (PS3.3 C.11, C.7.6.3.1.2):

1. stored values -> modality values with RescaleSlope / RescaleIntercept (Modality LUT);
2. modality values -> display values with the VOI window (C.11.2.1.2, ``LINEAR``,
   ``LINEAR_EXACT`` and ``SIGMOID``; the first window when several are given) or a VOI LUT sequence;
   without either, the image's own min/max;
3. MONOCHROME1 is inverted so that, as in MONOCHROME2, bright means dense; colour images (RGB,
   YBR_*, PALETTE COLOR — dermoscopy, photographs) become ITU-R BT.601 luma;
4. the image is padded to a square (with the background value 0) and resized with area averaging.

Compressed transfer syntaxes (JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE) decode through
pydicom's pixel-data plugins (pylibjpeg, Pillow). Multi-frame objects follow
``data.dicom.multiframe``. Only one image is held in memory at a time and it is downscaled at once,
so very large images never pile up.

Every failure raises :class:`~medrobust.data.sources.base.Rejected` carrying a short machine-readable
``reason`` (the column of ``quarantine.csv``) and a message saying what is wrong and how to fix it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pydantic import model_validator

from medrobust.config import StrictModel
from medrobust.data.codestream import check_stream, decode_array
from medrobust.data.integrity import check_luts
from medrobust.data.sources.base import Rejected

log = logging.getLogger(__name__)

MIN_SIDE = 8
MAX_PIXELS = 50_000_000  # data.max_pixels' default: larger images are quarantined before they are decoded

#: Header keys read for lookups (label tables, grouping, de-duplication). They identify people
#: or objects: they are used inside ingest and never written anywhere.
LOOKUP_KEYS = ("PatientID", "SOPInstanceUID", "ImageLaterality", "Laterality")

#: Non-identifying technical attributes kept in the manifest. Each passes the PS3.15 Annex E basic
#: profile filter in :mod:`medrobust.data.deid` before it is written.
KEPT_TAGS = ("Modality", "PhotometricInterpretation", "BitsStored", "Rows", "Columns", "NumberOfFrames",
             "SamplesPerPixel", "BodyPartExamined", "ViewPosition", "ImageLaterality", "TransferSyntaxUID")

COLOR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR"}


class DicomConfig(StrictModel):
    """``data.dicom``: how DICOM pixel data becomes one grey image (every DICOM source)."""

    multiframe: Literal["reject", "first", "middle"] = "reject"  # 3-D volumes / cine: quarantine or take a frame
    color: Literal["luma", "reject"] = "luma"                   # RGB/YBR (dermoscopy): ITU-R BT.601 luma, or quarantine

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: object) -> object:
        if isinstance(data, dict) and "max_pixels" in data:
            raise ValueError("data.dicom.max_pixels is now data.max_pixels (it limits every image format, "
                             "not only DICOM): move the setting up one level")
        return data


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image plus header facts. ``header`` holds identifiers: never persist it.

    Attributes:
        pixels: float32, (size, size), in [0, 1].
        header: the :data:`LOOKUP_KEYS` present in the object (identifiers: for lookups only).
        facts: the :data:`KEPT_TAGS` present, raw (de-identified by ingest before they are written).
    """

    pixels: np.ndarray  # float32, (size, size), in [0, 1]
    header: dict[str, str] = field(default_factory=dict)  # LOOKUP_KEYS present in the object
    facts: dict[str, str] = field(default_factory=dict)   # KEPT_TAGS, raw (de-identified by ingest)


def _window_linear(x: np.ndarray, center: float, width: float, exact: bool) -> np.ndarray:
    """PS3.3 C.11.2.1.2 on ``x`` in place (float32), output in [0, 1]."""
    if exact:
        lo = center - width / 2.0
        x -= lo
        x *= 1.0 / max(width, 1e-12)
    else:
        if width < 1:
            raise Rejected("invalid_values", f"WindowWidth {width} < 1 is not allowed (PS3.3 C.11.2.1.2)")
        if width == 1:
            return (x > center - 0.5).astype(np.float32)
        x -= center - 0.5
        x *= 1.0 / (width - 1.0)
        x += 0.5
    return np.clip(x, 0.0, 1.0, out=x)


def _short_element(ds: pydicom.Dataset) -> str | None:
    """The element whose value holds fewer bytes than its header declares (a cut-off file).

    A file cut off mid-header makes ``dcmread`` fail; one cut off later leaves the *last* element
    read short (pydicom stops at the end of the data), so only the last element needs checking.
    """
    keys = list(ds.keys())
    for tag in keys[-1:]:
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF and len(value) < length:
            return str(tag)
    return None


def _first(value: object) -> float:
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def to_display(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored pixel values -> display values in [0, 1] (modality LUT, VOI, MONOCHROME1).

    Works in float32, in place: 24 bits of mantissa hold any 16-bit stored value exactly, and the
    result only needs [0, 1] precision. NaN/inf (from a broken rescale or float pixel data) are
    caught through the min/max every image needs anyway.

    Args:
        ds: the data set the pixels come from (RescaleSlope/Intercept, WindowCenter/Width,
            VOILUTFunction, VOILUTSequence, PhotometricInterpretation are read).
        stored: one frame of stored values, (rows, columns).

    Returns:
        Display values, float32, same shape, in [0, 1]; bright means dense (MONOCHROME1 is inverted).

    Raises:
        Rejected: ``invalid_values``: a non-finite window, WindowWidth < 1 (``LINEAR``) or <= 0 (``SIGMOID``),
            an unknown VOILUTFunction, or a constant / non-finite image without a VOI window.
    """
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    x = stored.astype(np.float32)
    if slope != 1.0:
        x *= slope
    if intercept != 0.0:
        x += intercept
    if "WindowCenter" in ds and "WindowWidth" in ds:
        func = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if not (np.isfinite(center) and np.isfinite(width)):
            raise Rejected("invalid_values", f"WindowCenter/WindowWidth {center}/{width} are not finite")
        if func == "SIGMOID":  # PS3.3 C.11.2.1.3.1, output range [0, 1]
            if width <= 0:
                raise Rejected("invalid_values", f"WindowWidth {width} <= 0 with a SIGMOID VOI LUT function")
            with np.errstate(over="ignore"):
                y = (1.0 / (1.0 + np.exp(-4.0 * (x.astype(np.float64) - center) / width))).astype(np.float32)
        elif func in ("LINEAR", "LINEAR_EXACT"):
            y = _window_linear(x, center, width, func == "LINEAR_EXACT")
        else:
            raise Rejected(
                "invalid_values", f"VOILUTFunction {func!r} is not defined (LINEAR, LINEAR_EXACT, SIGMOID)"
            )
    elif "VOILUTSequence" in ds:
        lut = pydicom.pixels.apply_voi_lut(stored, ds)  # handles the LUT descriptor itself
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        y = np.clip(lut.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    else:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
            raise Rejected("invalid_values", "constant or non-finite image and no VOI window")
        x -= lo
        x *= 1.0 / (hi - lo)
        y = x
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        np.subtract(1.0, y, out=y)
    return y


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Pad to a centred square with 0 (background), then resize to ``size``x``size``.

    Downscaling averages over each output pixel's exact footprint (Pillow's BOX filter: area
    averaging, also for non-integer factors); upscaling is bilinear. Pillow works on float32 ('F')
    images here, so no precision is lost to 8 bits, and no torch is needed (decoding runs in
    light worker processes).

    Args:
        img: a 2-D float image with values in [0, 1].
        size: the output side length in pixels.

    Returns:
        float32, (size, size), in [0, 1].
    """
    from PIL import Image

    h, w = img.shape
    side = max(h, w)
    if h != w:
        padded = np.zeros((side, side), dtype=img.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        padded[top : top + h, left : left + w] = img
        img = padded
    src = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.BILINEAR
    # both filters average inputs with non-negative weights summing to 1: [0, 1] stays [0, 1]
    return np.asarray(src.resize((size, size), resample=resample), dtype=np.float32)


def _read(data: bytes | str | Path) -> pydicom.Dataset:
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if len(data) == 0:
        raise Rejected("empty_file", "the file has zero bytes; re-export it from the source")
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise Rejected("not_dicom", f"not a DICOM file (no 'DICM' preamble and no valid header): {exc}") from None
    except (EOFError, OSError) as exc:
        rej = Rejected("truncated", f"file ends early: {exc}")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on garbage input
        rej = Rejected("unreadable", f"{type(exc).__name__}: {exc}")
    rej.uid = uid_before_pixels(data)
    raise rej


def uid_before_pixels(data: bytes) -> str | None:
    """The SOPInstanceUID of a file whose pixel data is broken (so its label row is not "missing")."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.get("SOPInstanceUID", "") or "").strip() or None
    except Exception:  # noqa: BLE001 - best effort only
        return None


def _luma(rgb: np.ndarray, bits: int) -> np.ndarray:
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return y / float(2**bits - 1)


def decode_dicom(data: bytes | str | Path, size: int, cfg: DicomConfig | None = None,
                 max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Read and decode one DICOM object.

    Args:
        data: the file's bytes, or its path.
        size: output side length in pixels.
        cfg: multi-frame / colour policy (``data.dicom``); defaults if None.
        max_pixels: ``data.max_pixels``: frames x rows x columns above it are refused from the header,
            before the pixel data is decoded.

    Returns:
        The decoded image, lookup header and technical facts.

    Raises:
        Rejected: with a specific ``reason`` (see :data:`REASONS`), and the object's SOPInstanceUID in
            ``uid`` whenever it could be read.
        OSError: ``data`` is a path that cannot be read.
    """
    cfg = cfg or DicomConfig()
    ds = _read(data)
    try:
        return _decode_dataset(ds, size, cfg, max_pixels)
    except Rejected as rej:
        rej.uid = _sop_uid(ds)
        raise
    except MemoryError:
        raise  # the caller's (out_of_memory), not this file's syntax
    except Exception as exc:  # noqa: BLE001 - one malformed attribute (a DS 'abc', a short LUT) is this item's problem
        rej = Rejected("decode_failed", _describe(exc, ds))
        rej.uid = _sop_uid(ds)
        raise rej from None


def _sop_uid(ds: pydicom.Dataset) -> str | None:
    try:
        return str(ds.get("SOPInstanceUID", "") or "").strip() or None
    except Exception:  # noqa: BLE001 - a malformed UID element
        return None


def _describe(exc: Exception, ds: pydicom.Dataset | None = None) -> str:
    """The exception class and message, with the object's identifying values blanked out."""
    text = " ".join(str(exc).split())[:200]
    if ds is not None:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs"):
            try:
                value = str(ds.get(keyword, "") or "").strip()
            except Exception:  # noqa: BLE001
                continue
            if len(value) >= 3:
                text = text.replace(value, "<identifier>")
    return f"{type(exc).__name__} while decoding: {text}; the file is malformed (fix or re-export it)"


def _decode_dataset(ds: pydicom.Dataset, size: int, cfg: DicomConfig, max_pixels: int) -> DecodedImage:
    short = _short_element(ds)
    if short is not None:
        raise Rejected("truncated", f"element {short} is shorter than its declared length: the file was cut off")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:
            raise Rejected(
                "truncated", "image attributes (Rows/Columns) but no pixel data: the file was probably cut off"
            )
        kind = str(getattr(ds, "Modality", "?"))
        raise Rejected("no_pixel_data", f"no PixelData element (Modality {kind}, SOPClass {getattr(ds, 'SOPClassUID', '?')})")
    header = {k: str(v).strip() for k in LOOKUP_KEYS if (v := ds.get(k)) is not None}
    if not header.get("SOPInstanceUID"):
        raise Rejected("missing_instance_uid", "SOPInstanceUID is empty; the image cannot be matched to a label")
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "")
    if photometric not in ("MONOCHROME1", "MONOCHROME2") and not (photometric in COLOR and cfg.color == "luma"):
        raise Rejected(
            "unsupported_photometric",
            f"PhotometricInterpretation {photometric!r}; supported: MONOCHROME1, MONOCHROME2"
            + (", and colour (data.dicom.color: luma)" if cfg.color == "reject" else ", RGB, YBR_*, PALETTE COLOR"),
        )
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if rows == 0 or cols == 0:
        raise Rejected("empty_image", f"Rows x Columns is {rows} x {cols}: there is no image")
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise Rejected("unsupported_dimensions", f"{rows}x{cols} pixels; need at least {MIN_SIDE}x{MIN_SIDE}")
    check_luts(ds, photometric)
    if frames > 1 and cfg.multiframe == "reject":
        raise Rejected(
            "multiframe",
            f"{frames} frames (a volume or cine); set data.dicom.multiframe to first or middle to take one frame",
        )
    if rows * cols * frames > max_pixels:
        raise Rejected("too_large", f"{frames} x {rows} x {cols} pixels > data.max_pixels {max_pixels}; "
                                    "raise it if this is real")
    check_stream(ds, frames, rows, cols, spp)  # what a compressed stream says about its own damage
    stored = decode_array(ds)
    expected = (rows, cols) if spp == 1 else (rows, cols, spp)
    if frames > 1:
        if stored.ndim < 3 or stored.shape[0] != frames:
            raise Rejected("corrupt_pixel_data", f"decoded shape {stored.shape}, expected {frames} frames")
        stored = stored[0 if cfg.multiframe == "first" else frames // 2]
    if photometric == "PALETTE COLOR":
        stored = pydicom.pixels.apply_color_lut(stored, ds)
        expected = (rows, cols, 3)
    if stored.shape != expected:
        raise Rejected("unsupported_dimensions", f"decoded shape {stored.shape}, expected {expected}")
    if stored.ndim == 3:  # colour: pydicom returns RGB (YBR converted)
        if photometric == "PALETTE COLOR":  # the LUT's own bit depth (descriptor's third value)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        else:
            bits = int(getattr(ds, "BitsStored", 8) or 8)
        display = _luma(stored.astype(np.float64), bits)
        if not np.all(np.isfinite(display)) or float(display.max() - display.min()) <= 0.0:
            raise Rejected("invalid_values", "constant or non-finite colour image")
        display = np.clip(display, 0.0, 1.0)
    else:
        display = to_display(ds, stored)
    lo, hi = float(display.min()), float(display.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise Rejected("invalid_values", "NaN or inf after rescale and windowing")
    if hi - lo <= 0.0:
        raise Rejected("invalid_values", "constant image after windowing")
    facts = {}
    for k in KEPT_TAGS:
        if k == "TransferSyntaxUID":
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if ts is not None:
                facts[k] = str(ts)
        elif (v := ds.get(k)) is not None:
            facts[k] = str(v)
    return DecodedImage(pixels=resize_square(display, size), header=header, facts=facts)


def array_to_image(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 / float [0, 1] -> grey (size, size) float32 in [0, 1].

    uint8 is scaled by 1/255 and uint16 by 1/65535; other dtypes must already lie in [0, 1]. Three or four
    channels (RGB, RGBA: alpha is ignored) become BT.601 luma; then :func:`resize_square`.

    Args:
        arr: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) pixels, both sides at least :data:`MIN_SIDE`.
        size: the output side length in pixels.

    Returns:
        float32, (size, size), in [0, 1].

    Raises:
        Rejected: ``unsupported_dimensions`` (another shape, or a side below :data:`MIN_SIDE`),
            ``empty_image`` (zero size), ``invalid_values`` (NaN/inf, or float values outside [0, 1]).
    """
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        a = a.astype(np.float64) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float64) / 65535.0
    else:
        a = a.astype(np.float64)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise Rejected("unsupported_dimensions", f"image array of shape {a.shape}; need (H, W) or (H, W, 3)")
    if a.size == 0:
        raise Rejected("empty_image", "zero-size image")
    if min(a.shape) < MIN_SIDE:
        raise Rejected("unsupported_dimensions", f"{a.shape[0]}x{a.shape[1]} pixels; need at least {MIN_SIDE}x{MIN_SIDE}")
    if not np.all(np.isfinite(a)):
        raise Rejected("invalid_values", "NaN or inf pixel values")
    if a.min() < 0.0 or a.max() > 1.0 + 1e-6:
        raise Rejected("invalid_values", f"float pixel values in [{a.min():.3g}, {a.max():.3g}], expected [0, 1]")
    return resize_square(np.clip(a, 0.0, 1.0), size)
