"""Decode one DICOM file to a display-ready float image in [0, 1], or say precisely why not.

The chain follows the DICOM standard (PS3.3 C.11, C.7.6.3.1.2):

1. stored values -> modality values with RescaleSlope / RescaleIntercept (Modality LUT);
2. modality values -> display values with the VOI window (C.11.2.1.2, ``LINEAR`` and
   ``LINEAR_EXACT``; the first window when several are given) or a VOI LUT sequence;
   without either, the image's own min/max;
3. MONOCHROME1 is inverted so that, as in MONOCHROME2, bright means dense;
4. the image is padded to a square (with the background value 0) and resized with area averaging.

Every failure raises :class:`DicomRejected` carrying a short machine-readable ``reason`` (the
column of ``quarantine.csv``) and a human message saying what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

#: The reasons a file can be quarantined for. Tests and reports rely on these names.
REASONS = {
    "unreadable": "the file could not be read as DICOM",
    "truncated": "the file ends before its declared content",
    "not_dicom": "no DICOM preamble/header (is this really a DICOM file?)",
    "no_pixel_data": "a DICOM object without an image (e.g. a structured report)",
    "unsupported_dimensions": "not a single 2-D grey-level frame of at least 8x8 pixels",
    "unsupported_photometric": "PhotometricInterpretation other than MONOCHROME1/MONOCHROME2",
    "corrupt_pixel_data": "the pixel data cannot be decoded to the declared shape",
    "invalid_values": "NaN/inf or a constant image after rescale and windowing",
    "missing_patient_id": "no PatientID: a patient-level split is impossible",
    "missing_label": "no row for this SOPInstanceUID in the labels CSV",
    "label_not_allowed": "the label is not one of data.classes",
    "duplicate_sop_uid": "another file already has this SOPInstanceUID",
}

MIN_SIDE = 8


class DicomRejected(Exception):
    """A file that must go to quarantine; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image plus the header facts ingest needs. Holds identifiers: never persist it."""

    pixels: np.ndarray  # float32, (size, size), in [0, 1]
    patient_id: str
    sop_instance_uid: str
    modality: str
    photometric: str
    bits_stored: int
    rows: int
    columns: int


def _window_linear(x: np.ndarray, center: float, width: float, exact: bool) -> np.ndarray:
    if exact:
        lo, hi = center - width / 2.0, center + width / 2.0
        return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if width < 1:
        raise DicomRejected("invalid_values", f"WindowWidth {width} < 1 is not allowed (PS3.3 C.11.2.1.2)")
    y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) if width > 1 else (x > center - 0.5).astype(float)
    return np.clip(y, 0.0, 1.0)


def _short_element(ds: pydicom.Dataset) -> str | None:
    """The first element whose value holds fewer bytes than its header declares (a cut-off file)."""
    for tag in ds.keys():
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
    """Stored pixel values -> display values in [0, 1] (modality LUT, VOI, MONOCHROME1)."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    x = stored.astype(np.float64) * slope + intercept
    if "WindowCenter" in ds and "WindowWidth" in ds:
        func = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if func not in ("LINEAR", "LINEAR_EXACT"):
            raise DicomRejected(
                "invalid_values", f"VOILUTFunction {func!r} is not supported (LINEAR, LINEAR_EXACT)"
            )
        y = _window_linear(x, _first(ds.WindowCenter), _first(ds.WindowWidth), func == "LINEAR_EXACT")
    elif "VOILUTSequence" in ds:
        lut = pydicom.pixels.apply_voi_lut(stored, ds)  # handles the LUT descriptor itself
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        y = np.clip(lut.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
    else:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
            raise DicomRejected("invalid_values", "constant or non-finite image and no VOI window")
        y = (x - lo) / (hi - lo)
    if not np.all(np.isfinite(y)):
        raise DicomRejected("invalid_values", "NaN or inf after rescale and windowing")
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        y = 1.0 - y
    return y


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Pad to a centred square with 0 (background), then resize to ``size``x``size``."""
    h, w = img.shape
    side = max(h, w)
    if h != w:
        padded = np.zeros((side, side), dtype=img.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        padded[top : top + h, left : left + w] = img
        img = padded
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    mode = "area" if side >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0, 0]
    return out.clamp_(0.0, 1.0).numpy()


def decode_dicom(path: str | Path, size: int) -> DecodedImage:
    """Read and decode one DICOM file.

    Args:
        path: the file.
        size: output side length in pixels.

    Returns:
        The decoded image and the header facts ingest needs.

    Raises:
        DicomRejected: with a specific ``reason`` (see :data:`REASONS`).
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DicomRejected("not_dicom", f"not a DICOM file: {exc}") from None
    except (EOFError, OSError) as exc:
        raise DicomRejected("truncated", f"file ends early while reading the header: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on garbage input
        raise DicomRejected("unreadable", f"{type(exc).__name__}: {exc}") from None

    short = _short_element(ds)
    if short is not None:
        raise DicomRejected("truncated", f"element {short} is shorter than its declared length: the file was cut off")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:
            raise DicomRejected(
                "truncated", "image attributes (Rows/Columns) but no pixel data: the file was probably cut off"
            )
        kind = str(getattr(ds, "Modality", "?"))
        raise DicomRejected("no_pixel_data", f"no PixelData element (Modality {kind}, SOPClass {getattr(ds, 'SOPClassUID', '?')})")
    patient_id = str(getattr(ds, "PatientID", "") or "").strip()
    sop_uid = str(getattr(ds, "SOPInstanceUID", "") or "").strip()
    if not patient_id:
        raise DicomRejected("missing_patient_id", "PatientID is empty; add it or drop the file")
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomRejected(
            "unsupported_photometric",
            f"PhotometricInterpretation {photometric!r}; supported: MONOCHROME1, MONOCHROME2",
        )
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames != 1 or spp != 1 or rows < MIN_SIDE or cols < MIN_SIDE:
        raise DicomRejected(
            "unsupported_dimensions",
            f"{frames} frame(s) of {rows}x{cols}x{spp}; need one 2-D frame >= {MIN_SIDE}x{MIN_SIDE}",
        )
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        raise DicomRejected("corrupt_pixel_data", f"{type(exc).__name__}: {exc}") from None
    if stored.shape != (rows, cols):
        raise DicomRejected(
            "unsupported_dimensions", f"decoded shape {stored.shape}, expected ({rows}, {cols})"
        )
    display = to_display(ds, stored)
    if float(display.max() - display.min()) <= 0.0:
        raise DicomRejected("invalid_values", "constant image after windowing")
    return DecodedImage(
        pixels=resize_square(display, size),
        patient_id=patient_id,
        sop_instance_uid=sop_uid,
        modality=str(getattr(ds, "Modality", "") or ""),
        photometric=photometric,
        bits_stored=int(getattr(ds, "BitsStored", 0) or 0),
        rows=rows,
        columns=cols,
    )
