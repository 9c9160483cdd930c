"""Pixel integrity: what a compressed DICOM stream says about its own damage, checked before decoding.

A decoder given a damaged stream often still returns an image — a JPEG 2000 file with a few hundred
flipped bytes decodes to pixels that are mostly wrong — so ingest looks at what the stream carries
about itself, and quarantines the item as ``corrupt_pixel_data`` when any of it disagrees:

* **Encapsulation** (PS3.5 A.4): every frame's fragments can be found.
* **JPEG 2000 / HTJ2K** (ITU-T T.800 Annex A), per frame: the codestream starts with SOC and SIZ; the
  image size and component count in SIZ match Rows, Columns and SamplesPerPixel (its precision may
  legitimately differ from BitsStored, as in pydicom's ``693_J2KR.dcm``, so only an impossible one
  is refused); every main-header and tile-part-header marker segment lies inside the stream; each
  tile-part's length (Psot) lands exactly on the next SOT or on EOC, and EOC ends the stream. Inside
  entropy-coded data, bit stuffing guarantees that no 0xFF byte is followed by one above 0x8F
  (T.800 A.1.1, B.10.1, C.1.3), so such a pair is damage (SOP and EPH markers, 0xFF91 and 0xFF92,
  are the allowed exceptions).
* **RLE Lossless** (PS3.5 G.3), per frame: the header declares one segment per byte plane
  (SamplesPerPixel x BitsAllocated / 8), its offsets start at 64, increase, and lie inside the frame,
  and the unused ones are 0; pydicom then checks each segment's decoded length.
* **Every transfer syntax:** a warning raised while decoding is treated as damage.

What cannot be detected: these formats carry no checksum over the image data. A flipped byte inside
JPEG 2000 entropy-coded data that creates no invalid marker, a flipped literal byte in an RLE run, or
any change to uncompressed pixel data decodes to a valid-looking image. (``tests/data/test_codestream.py``
measures how often random damage is caught.) Only a checksum kept outside the file, such as the
source's SHA-256 in the manifest, can prove that the bytes are the ones that were sent.
"""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from medrobust.data.sources.base import Rejected

J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                          "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                          "1.2.840.10008.1.2.4.203"})
RLE_SYNTAX = "1.2.840.10008.1.2.5"
SOC, SIZ, SOT, SOD, EOC = 0xFF4F, 0xFF51, 0xFF90, 0xFF93, 0xFFD9
ALLOWED_IN_DATA = (0x91, 0x92)  # SOP and EPH may sit between packets


def _u16(b: bytes, i: int) -> int:
    return int.from_bytes(b[i:i + 2], "big")


def _u32(b: bytes, i: int) -> int:
    return int.from_bytes(b[i:i + 4], "big")


def _segments(cs: bytes, pos: int, stop: int, where: str) -> int:
    """Walk marker segments from ``pos`` until the marker ``stop``; returns its position."""
    n = len(cs)
    while True:
        if pos + 4 > n:
            raise ValueError(f"the {where} runs past the end of the codestream")
        marker = _u16(cs, pos)
        if marker == stop:
            return pos
        if marker >> 8 != 0xFF or marker < 0xFF30:
            raise ValueError(f"bytes {marker:04X} at {pos} in the {where} are not a marker")
        length = _u16(cs, pos + 2)
        if length < 2 or pos + 2 + length > n:
            raise ValueError(f"marker {marker:04X} at {pos} in the {where} declares {length} bytes, past the end")
        pos += 2 + length


def check_j2k(cs: bytes, rows: int, cols: int, samples: int, bits_stored: int | None) -> None:
    """Raise ``ValueError`` saying what is wrong with one frame's JPEG 2000 codestream."""
    if cs[4:8] == b"jP  ":  # a JP2 file rather than a bare codestream: check the codestream inside
        start = cs.find(b"\xff\x4f\xff\x51")
        if start < 0:
            raise ValueError("a JP2 file without a codestream")
        cs = cs[start:]
    if len(cs) < 44 or _u16(cs, 0) != SOC or _u16(cs, 2) != SIZ:
        raise ValueError("the codestream does not start with SOC and SIZ")
    width, height = _u32(cs, 8) - _u32(cs, 16), _u32(cs, 12) - _u32(cs, 20)
    components = _u16(cs, 40)
    if (height, width) != (rows, cols) or components != samples:
        raise ValueError(f"SIZ declares {height} x {width} pixels with {components} components; the header says "
                         f"{rows} x {cols} with {samples}")
    precision = (cs[42] & 0x7F) + 1
    if precision > 38 or (bits_stored is not None and precision < bits_stored // 2):
        raise ValueError(f"SIZ declares {precision}-bit samples; BitsStored is {bits_stored}")
    pos = _segments(cs, 4 + _u16(cs, 4), SOT, "main header")
    buf = np.frombuffer(cs, np.uint8)
    n, part = len(cs), 0
    while _u16(cs, pos) != EOC:
        if pos + 12 > n or _u16(cs, pos) != SOT or _u16(cs, pos + 2) != 10:
            raise ValueError(f"tile-part {part}: no SOT marker at byte {pos} (the previous Psot is wrong, or the "
                             "stream was cut off)")
        psot = _u32(cs, pos + 6)
        end = n - 2 if psot == 0 else pos + psot
        if psot and (psot < 14 or end > n - 2):
            raise ValueError(f"tile-part {part} at byte {pos} declares {psot} bytes (Psot), past the end")
        data = _segments(cs, pos + 12, SOD, f"header of tile-part {part}") + 2
        body = buf[data:end]
        ff = np.flatnonzero(body[:-1] == 0xFF)
        bad = ff[(body[ff + 1] > 0x8F) & ~np.isin(body[ff + 1], ALLOWED_IN_DATA)]
        if bad.size:
            raise ValueError(f"tile-part {part}: marker-like bytes FF{body[bad[0] + 1]:02X} at byte {data + bad[0]} "
                             "inside entropy-coded data, which bit stuffing never produces")
        pos, part = end, part + 1
        if pos + 2 > n:
            raise ValueError("the codestream ends without EOC")
    if len(cs) - pos - 2 > 1:  # one byte pads a fragment to even length
        raise ValueError(f"{len(cs) - pos - 2} bytes after EOC")


def check_rle(frame: bytes, samples: int, bits_allocated: int) -> None:
    """Raise ``ValueError`` saying what is wrong with one frame's RLE header (PS3.5 G.5)."""
    if len(frame) < 64:
        raise ValueError(f"an RLE frame of {len(frame)} bytes has no 64-byte header")
    header = np.frombuffer(frame[:64], "<u4")
    count, offsets = int(header[0]), header[1:]
    expected = samples * max(bits_allocated // 8, 1)
    if count != expected:
        raise ValueError(f"the RLE header declares {count} segments; SamplesPerPixel {samples} x BitsAllocated "
                         f"{bits_allocated} needs {expected}")
    used = offsets[:count]
    if used[0] != 64 or np.any(np.diff(used.astype(np.int64)) <= 0) or used[-1] >= len(frame) or offsets[count:].any():
        raise ValueError(f"the RLE segment offsets {used.tolist()} do not start at 64, increase and stay inside the "
                         f"{len(frame)}-byte frame (or unused offsets are not 0)")


def check_stream(ds: pydicom.Dataset, frames: int, rows: int, cols: int, samples: int) -> None:
    """Check a compressed DICOM object's encapsulated frames (``corrupt_pixel_data`` on damage)."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts not in J2K_SYNTAXES and ts != RLE_SYNTAX:
        return
    bits_stored = int(ds.BitsStored) if "BitsStored" in ds else None
    bits_allocated = int(getattr(ds, "BitsAllocated", 8) or 8)
    try:
        extended = ((ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
                    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds else None)
        for k, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended)):
            try:
                if ts == RLE_SYNTAX:
                    check_rle(frame, samples, bits_allocated)
                else:
                    check_j2k(frame, rows, cols, samples, bits_stored)
            except ValueError as exc:
                raise Rejected("corrupt_pixel_data", f"frame {k}: {exc}") from None
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the item structure itself is broken
        raise Rejected("corrupt_pixel_data", f"the encapsulated pixel data cannot be split into frames: "
                                             f"{type(exc).__name__}: {exc}") from None


def decode_array(ds: pydicom.Dataset) -> np.ndarray:
    """``ds.pixel_array``; a warning raised while decoding is ``corrupt_pixel_data``, a missing decoder
    ``unsupported_transfer_syntax``, any other decoder failure ``corrupt_pixel_data``."""
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            try:
                available = ts is None or not ts.is_compressed or get_decoder(ts).is_available
            except Exception:  # noqa: BLE001 - pydicom has no decoder for this syntax at all
                available = False
            msg = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            if not available or isinstance(exc, NotImplementedError):
                raise Rejected("unsupported_transfer_syntax",
                               f"transfer syntax {ts} ({getattr(ts, 'name', '?')}) cannot be decoded here: {msg}; "
                               "install its decoder (pylibjpeg-*) or transcode the file") from None
            raise Rejected("corrupt_pixel_data", msg) from None
    if caught:
        raise Rejected("corrupt_pixel_data", f"the decoder warned: {' '.join(str(caught[0].message).split())[:300]}")
    return arr


__all__ = ["check_j2k", "check_rle", "check_stream", "decode_array"]
