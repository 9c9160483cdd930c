"""Fuzzing the decoder (issue 14, item 7): mutated pydicom test files and PNGs through ingest's own decode path.

Each example takes a valid file from pydicom's test data (several transfer syntaxes: explicit and
implicit little endian, big endian, JPEG baseline and lossless, JPEG 2000, RLE, a palette image, a
multi-frame object) or a small PNG, then applies one to four mutations: flipped bytes anywhere, a cut,
inserted bytes, a header element rewritten (Rows, Columns, BitsAllocated, BitsStored, SamplesPerPixel,
PixelRepresentation, PhotometricInterpretation, the transfer syntax). The result must be a decoded image
(float32, 32 x 32, finite, in [0, 1]) or a quarantine entry (:class:`Rejected` with a known reason):
never another exception, and the process's peak memory must stay bounded (``max_pixels`` is set to 4 M).

Budget: ``EXAMPLES`` (2,000) examples, derandomized (the same examples on every run): 15 s on 2 cores.
"""

from __future__ import annotations

import io
import resource
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from medrobust.data.dicom import DicomConfig
from medrobust.data.items import decode_pixels
from medrobust.data.sources import REASONS, Rejected

EXAMPLES = 2000
SEEDS = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm",
         "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "examples_palette.dcm",
         "emri_small.dcm", "JPEG-lossless.dcm"]
CFG = DicomConfig(multiframe="first")
MAX_PIXELS = 4_000_000
HEADER = {"Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US", "SamplesPerPixel": "US",
          "PixelRepresentation": "US", "HighBit": "US", "NumberOfFrames": "IS"}
PHOTOMETRIC = ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "HSV", ""]
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4"]


def _seed_bytes() -> dict[str, bytes]:
    out = {}
    for name in SEEDS:
        path = get_testdata_file(name)
        if path is not None:
            out[name] = open(path, "rb").read()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)).save(buf, "PNG")
    out["small.png"] = buf.getvalue()
    return out


FILES = _seed_bytes()


def _rewrite(data: bytes, keyword: str, value: object) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if keyword == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = value
            elif keyword == "PhotometricInterpretation":
                ds.PhotometricInterpretation = value
            else:
                ds.add_new(keyword, HEADER[keyword], value)
            out = io.BytesIO()
            ds.save_as(out)
            return out.getvalue()
        except Exception:  # noqa: BLE001 - a mutation pydicom cannot write leaves the bytes as they were
            return data


mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("header"), st.sampled_from(sorted(HEADER)), st.integers(0, 65535)),
    st.tuples(st.just("photometric"), st.sampled_from(PHOTOMETRIC)),
    st.tuples(st.just("syntax"), st.sampled_from(SYNTAXES)),
)


def _apply(data: bytes, m: tuple) -> bytes:
    kind = m[0]
    if not data and kind in ("flip", "cut"):
        return data
    at = int(m[1] * (len(data) - 1)) if kind in ("flip", "cut", "insert") else 0
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ m[2]]) + data[at + 1:]
    if kind == "cut":
        return data[:at]
    if kind == "insert":
        return data[:at] + m[2] + data[at:]
    if kind == "header":
        return _rewrite(data, m[1], m[2] if m[1] != "NumberOfFrames" else str(m[2]))
    return _rewrite(data, "PhotometricInterpretation" if kind == "photometric" else "TransferSyntaxUID", m[1])


@pytest.fixture(scope="module")
def peak_before() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(FILES)), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_a_mutated_file_is_an_image_or_a_quarantine_entry_never_an_exception(name, mutations, peak_before):
    data = FILES[name]
    for m in mutations:
        data = _apply(data, m)
    kind = "image" if name.endswith(".png") else "dicom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixels, _header, _facts = decode_pixels(kind, data, None, True, 32, CFG, MAX_PIXELS)
        except Rejected as rej:
            assert rej.reason in REASONS and rej.message
        else:
            assert pixels.shape == (32, 32) and pixels.dtype == np.float32
            assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024  # ru_maxrss: KiB on Linux
    assert grown_mb < 1024, f"decoding one fuzzed file raised the peak memory by {grown_mb:.0f} MB"
