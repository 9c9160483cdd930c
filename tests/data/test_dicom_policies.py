"""DICOM decoding policies on real files from pydicom's and pydicom-data's wheels: multi-frame,
colour (RGB, YBR, palette, compressed), very large images, the size limit, and SIGMOID VOI."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medrobust.data.dicom import DicomConfig
from medrobust.data.dicom import decode_dicom, resize_square, to_display
from medrobust.data.sources.base import Rejected


def _bytes(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def _data_store(name: str) -> Path:
    import data_store  # pydicom-data's package: files shipped in its wheel, never downloaded

    return Path(data_store.__file__).parent / "data" / name


def test_multiframe_policy_rejects_or_takes_the_chosen_frame():
    raw = _bytes("emri_small.dcm")  # 10 frames of 64x64 MR
    with pytest.raises(Rejected) as err:
        decode_dicom(raw, 64, DicomConfig(multiframe="reject"))
    assert err.value.reason == "multiframe" and "10 frames" in err.value.message
    ds = pydicom.dcmread(io.BytesIO(raw))
    frames = ds.pixel_array
    for policy, index in (("first", 0), ("middle", 5)):
        img = decode_dicom(raw, 64, DicomConfig(multiframe=policy))
        expected = resize_square(to_display(ds, frames[index]), 64)
        np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    first = decode_dicom(raw, 64, DicomConfig(multiframe="first")).pixels
    middle = decode_dicom(raw, 64, DicomConfig(multiframe="middle")).pixels
    assert np.abs(first - middle).mean() > 0.01  # really another frame


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_uncompressed.dcm",
                                  "US1_J2KR.dcm", "ExplVR_BigEnd.dcm"])
def test_colour_images_become_bt601_luma(name):
    raw = _bytes(name)
    ds = pydicom.dcmread(io.BytesIO(raw))
    rgb = ds.pixel_array.astype(np.float64)  # pydicom converts YBR to RGB
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0
    img = decode_dicom(raw, 32)
    np.testing.assert_allclose(img.pixels, resize_square(luma.astype(np.float32), 32), atol=1e-5)
    assert img.facts["SamplesPerPixel"] == "3"
    with pytest.raises(Rejected) as err:
        decode_dicom(raw, 32, DicomConfig(color="reject"))
    assert err.value.reason == "unsupported_photometric"


def test_palette_colour_goes_through_its_lookup_table():
    raw = _bytes("OBXXXX1A.dcm")  # PALETTE COLOR, 600x800
    ds = pydicom.dcmread(io.BytesIO(raw))
    rgb = pydicom.pixels.apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # 16 here
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / (2**bits - 1)
    img = decode_dicom(raw, 64)
    np.testing.assert_allclose(img.pixels, resize_square(luma.astype(np.float32), 64), atol=1e-5)


def test_a_large_compressed_radiograph_is_downscaled_and_the_size_limit_holds():
    path = _data_store("RG3_J2KI.dcm")  # CR 1760x1760, MONOCHROME1, JPEG 2000
    raw = path.read_bytes()
    img = decode_dicom(raw, 64)
    assert img.pixels.shape == (64, 64) and img.pixels.dtype == np.float32
    assert 0.0 <= img.pixels.min() < img.pixels.max() <= 1.0
    assert img.facts["PhotometricInterpretation"] == "MONOCHROME1"
    assert img.facts["TransferSyntaxUID"].startswith("1.2.840.10008.1.2.4.9")  # JPEG 2000
    with pytest.raises(Rejected) as err:
        decode_dicom(raw, 64, max_pixels=1760 * 1760 - 1)
    assert err.value.reason == "too_large" and "max_pixels" in err.value.message


def test_sigmoid_voi_function_follows_ps3_3():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = copy.deepcopy(ds)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, "SIGMOID"
    stored = ds.pixel_array
    x = stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (x - 40.0) / 400.0))  # C.11.2.1.3.1 with output range [0, 1]
    np.testing.assert_allclose(to_display(ds, stored), expected, atol=1e-6)
