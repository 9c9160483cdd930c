"""DICOM decoding: rescale, VOI window, MONOCHROME1 — a round trip through ingest's decoder."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.data.dicom import decode_dicom, resize_square
from medrobust.data.sources.base import Rejected
from medrobust.data.synthetic import SyntheticPatient, make_dataset

PATIENT = SyntheticPatient("MRN0000001", "Test^Alice^P0000", "19700101")


def _intensity(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    return (0.1 + 0.8 * (0.5 * xx + 0.5 * yy)).astype(np.float64)


@pytest.mark.parametrize(
    ("mono1", "bits", "slope", "intercept"),
    [(False, 12, 1.0, 0.0), (True, 12, 1.0, 0.0), (False, 12, 0.5, 0.0), (True, 16, 2.0, -100.0),
     (True, 12, 0.5, -1024.0)],
)
def test_round_trip_recovers_intensities(tmp_path, mono1, bits, slope, intercept):
    img = _intensity()
    ds = make_dataset(img, PATIENT, "1.2.3", "1.2.3.4", "1.2.3.4.5", 1, "L", "CC",
                      bits_stored=bits, slope=slope, intercept=intercept, mono1=mono1)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = decode_dicom(path, size=32)
    assert out.facts["PhotometricInterpretation"] == ("MONOCHROME1" if mono1 else "MONOCHROME2")
    assert int(out.facts["BitsStored"]) == bits
    # quantisation to BitsStored is the only loss: one stored step in display units
    tol = 1.5 / (2**bits - 1) + 1e-6
    np.testing.assert_allclose(out.pixels, img, atol=tol)
    # MONOCHROME1 is inverted: bright means dense in both conventions
    assert out.pixels[-1, -1] > out.pixels[0, 0]


@pytest.mark.parametrize("mono1", [False, True])
def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path, mono1):
    stored = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3  # 0 .. 3069
    ds = make_dataset(_intensity(), PATIENT, "1.2.3", "1.2.3.4", "1.2.3.4.7", 1, "L", "CC",
                      bits_stored=12, mono1=mono1)
    ds.PixelData = stored.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"
    center, width = 1500.0, 4000.0  # in modality units: stored * 2 - 1000 spans -1000 .. 5138
    ds.WindowCenter, ds.WindowWidth = str(center), str(width)
    path = tmp_path / "r.dcm"
    ds.save_as(path, enforce_file_format=True)

    modality = stored.astype(np.float64) * 2 - 1000
    expected = np.clip((modality - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    if mono1:
        expected = 1 - expected
    got = decode_dicom(path, size=32).pixels
    np.testing.assert_allclose(got, expected, atol=1e-6)
    ignoring_rescale = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    assert np.abs(got - (1 - ignoring_rescale if mono1 else ignoring_rescale)).max() > 0.2


def test_window_clips_outside_values(tmp_path):
    img = _intensity()
    ds = make_dataset(img, PATIENT, "1.2.3", "1.2.3.4", "1.2.3.4.9", 1, "L", "CC", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = "2048", "1024"  # values outside [1536, 2560] saturate
    path = tmp_path / "w.dcm"
    ds.save_as(path, enforce_file_format=True)
    px = decode_dicom(path, 32).pixels
    assert px.min() == 0.0 and px.max() == 1.0
    stored = img * 4095
    assert np.all(px[stored < 1500] == 0.0) and np.all(px[stored > 2600] == 1.0)


def test_resize_pads_to_square_with_background():
    img = np.ones((20, 10), dtype=np.float32)
    out = resize_square(img, 20)
    assert out.shape == (20, 20)
    assert out[:, :4].max() == 0.0 and out[:, 6:14].min() == pytest.approx(1.0)


def test_non_dicom_is_rejected_with_reason(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(Rejected) as err:
        decode_dicom(path, 32)
    assert err.value.reason == "not_dicom"
