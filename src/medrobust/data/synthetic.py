"""Embedded default data: a synthetic, mammography-like DICOM study tree with realistic headers.

Each image is a breast-shaped region filled with power-law (1/f^β) texture, the classic model of
mammographic parenchyma; about half of the images carry a lesion, a compact bright mass with a soft
edge. The tree looks like a real export:

    <root>/dicom/study_0007/series_02/img_0003.dcm
    <root>/labels.csv          (SOPInstanceUID,label)

The headers carry everything ingest must handle and must remove: PatientID, PatientName,
PatientBirthDate, Study/Series/SOP Instance UIDs, Modality ``MG``, MONOCHROME1 as well as
MONOCHROME2, BitsStored 12 or 16, RescaleSlope/RescaleIntercept and WindowCenter/WindowWidth.
Folder names are opaque indices, as they are in most PACS exports, so that paths carry no
identifier.

Everything is generated from one seed, so the same params give byte-identical pixel data.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pydantic import Field, model_validator

from medrobust.config import Seed, StrictModel, field_error

log = logging.getLogger(__name__)

MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
_FIRST = ["Jane", "Maria", "Aiko", "Fatima", "Olga", "Grace", "Lucia", "Amara", "Ingrid", "Mei"]
_LAST = ["Doe", "Garcia", "Tanaka", "Okafor", "Novak", "Smith", "Rossi", "Haddad", "Larsen", "Chen"]
_VIEWS = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


class SyntheticConfig(StrictModel):
    """``data.synthetic``: the embedded default data (used when ``data.source`` is ``synthetic``)."""

    n_patients: int = Field(120, ge=3, le=100_000)
    images_per_patient_min: int = Field(3, ge=1, le=100)
    images_per_patient_max: int = Field(5, ge=1, le=100)
    image_size: int = Field(128, ge=32, le=4096)
    lesion_fraction: float = Field(0.5, ge=0.0, le=1.0)
    monochrome1_fraction: float = Field(0.25, ge=0.0, le=1.0)
    seed: Seed = 1234

    @model_validator(mode="after")
    def _min_below_max(self) -> SyntheticConfig:
        if self.images_per_patient_min > self.images_per_patient_max:
            raise field_error("images_per_patient_min", "must be <= images_per_patient_max")
        return self


@dataclass(frozen=True)
class SyntheticPatient:
    """The identifying header values of one synthetic patient: made up, shaped like real ones, for de-id tests.

    Attributes:
        patient_id: PatientID (``MRN`` and seven digits).
        patient_name: PatientName, ``Family^Given^P<index>``.
        birth_date: PatientBirthDate, ``YYYYMMDD``.
    """

    patient_id: str
    patient_name: str
    birth_date: str


def power_law_texture(rng: np.random.Generator, size: int, beta: float = 3.0) -> np.ndarray:
    """Gaussian random field with a 1/f^β power spectrum, scaled to zero mean and unit std.

    Args:
        rng: the random generator (consumed).
        size: the side length of the square field.
        beta: the spectral exponent; larger values give smoother, blobbier texture.

    Returns:
        float64, (size, size).
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spec, s=(size, size))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def synth_intensity(
    rng: np.random.Generator, size: int, lesion: bool, laterality: str
) -> np.ndarray:
    """One mammography-like image as intensities in [0, 1] (1 = dense / bright).

    Args:
        rng: the random generator (consumed).
        size: the side length in pixels.
        lesion: whether to add a compact bright mass inside the breast.
        laterality: ``L`` puts the chest wall on the left edge, anything else (``R``) on the right.

    Returns:
        float64, (size, size), in [0, 1]; the background (air) is 0.
    """
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    # breast: a half ellipse against the chest wall, background air = 0
    cx = 0.0 if laterality == "L" else 1.0
    ry, rx = rng.uniform(0.42, 0.5), rng.uniform(0.75, 0.95)
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - 0.5) / ry) ** 2)
    breast = np.clip((1.0 - r) / 0.06, 0.0, 1.0)
    tissue = 0.36 + 0.06 * power_law_texture(rng, size, beta=rng.uniform(2.6, 3.2))
    tissue += 0.02 * power_law_texture(rng, size, beta=1.0)  # fine grain
    img = breast * tissue
    if lesion:
        # a compact mass, well inside the breast
        for _ in range(100):
            ly, lx = rng.uniform(0.25, 0.75), rng.uniform(0.12, 0.6)
            lx = lx if laterality == "L" else 1.0 - lx
            if breast[int(ly * (size - 1)), int(lx * (size - 1))] >= 1.0:
                break
        rad = rng.uniform(0.06, 0.09)
        d2 = ((xx - lx) ** 2 + (yy - ly) ** 2) / rad**2
        img = img + rng.uniform(0.3, 0.4) * np.exp(-0.5 * d2**2)  # flat top, soft edge
    return np.clip(img, 0.0, 1.0)


def _encode(
    intensity: np.ndarray, bits_stored: int, slope: float, intercept: float, mono1: bool
) -> tuple[np.ndarray, float, float]:
    """Intensities -> stored values; returns stored pixels and the VOI window (center, width)."""
    max_modality = float(2**bits_stored - 1) * slope + intercept
    lo_mod, hi_mod = intercept, max_modality
    value = intensity if not mono1 else 1.0 - intensity
    modality = lo_mod + value * (hi_mod - lo_mod)
    stored = np.round((modality - intercept) / slope)
    stored = np.clip(stored, 0, 2**bits_stored - 1).astype(np.uint16)
    # the window spans the full modality range: linear VOI then recovers the intensities
    center = (lo_mod + hi_mod) / 2.0 + 0.5
    width = (hi_mod - lo_mod) + 1.0
    return stored, center, width


def make_dataset(
    intensity: np.ndarray,
    patient: SyntheticPatient,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    laterality: str,
    view: str,
    bits_stored: int = 12,
    slope: float = 1.0,
    intercept: float = 0.0,
    mono1: bool = False,
) -> FileDataset:
    """Build a DICOM MG dataset holding ``intensity`` (values in [0, 1]).

    The stored values go through the rescale and a ``LINEAR`` VOI window spanning the modality range, so
    decoding recovers ``intensity`` up to quantisation. The header also holds the identifying attributes
    de-identification must remove (patient, accession number, institution, referring physician).

    Args:
        intensity: the image, (rows, columns), in [0, 1] (1 = dense).
        patient: the patient's identifying values.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        sop_uid: SOPInstanceUID (also the file meta's MediaStorageSOPInstanceUID).
        instance_number: InstanceNumber.
        laterality: ImageLaterality (``L`` / ``R``).
        view: ViewPosition (``CC`` / ``MLO``).
        bits_stored: BitsStored (BitsAllocated is 16).
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        mono1: store as MONOCHROME1 (inverted) instead of MONOCHROME2.

    Returns:
        The data set (Explicit VR Little Endian, 128-byte preamble), ready for ``save_as``.
    """
    stored, center, width = _encode(intensity, bits_stored, slope, intercept, mono1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MG_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.patient_name
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "F"
    ds.AccessionNumber = f"ACC{int(hashlib.sha256(sop_uid.encode()).hexdigest()[:12], 16) % 10**8:08d}"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.Modality = "MG"
    ds.Manufacturer = "medrobust-synthetic"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = 1
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = stored.tobytes()
    return ds


def generate_tree(out_dir: str | Path, cfg: SyntheticConfig) -> dict[str, int]:
    """Write a synthetic DICOM study tree and ``labels.csv`` under ``out_dir``.

    The tree is ``out_dir/dicom/study_NNNN/series_01/img_NNNN.dcm``; ``labels.csv`` has the columns
    ``SOPInstanceUID,label`` (``lesion`` or ``normal``). Bit depth, rescale and polarity vary per study.

    Args:
        out_dir: the folder to write into (created if needed; files of the same name are overwritten).
        cfg: ``data.synthetic``.

    Returns:
        Counts: patients, images and lesions written.
    """
    out_dir = Path(out_dir)
    dicom_root = out_dir / "dicom"
    dicom_root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    rows: list[tuple[str, str]] = []
    n_images = n_lesions = 0
    for p in range(cfg.n_patients):
        patient = SyntheticPatient(
            patient_id=f"MRN{rng.integers(10**6, 10**7)}",
            patient_name=f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}^P{p:04d}",
            birth_date=f"{rng.integers(1940, 1990)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        )
        study_uid = generate_uid(entropy_srcs=[str(cfg.seed), "study", str(p)])
        series_uid = generate_uid(entropy_srcs=[str(cfg.seed), "series", str(p)])
        # every patient's study is acquired on one device: bit depth / rescale / polarity per study
        bits = int(rng.choice([12, 16]))
        slope, intercept = [(1.0, 0.0), (0.5, 0.0), (2.0, -100.0)][rng.integers(3)]
        if bits == 16 and slope > 1:
            slope, intercept = 1.0, 0.0
        mono1 = bool(rng.random() < cfg.monochrome1_fraction)
        n = int(rng.integers(cfg.images_per_patient_min, cfg.images_per_patient_max + 1))
        series_dir = dicom_root / f"study_{p:04d}" / "series_01"
        series_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lat, view = _VIEWS[i % len(_VIEWS)]
            lesion = bool(rng.random() < cfg.lesion_fraction)
            sop_uid = generate_uid(entropy_srcs=[str(cfg.seed), "sop", str(p), str(i)])
            img = synth_intensity(rng, cfg.image_size, lesion, lat)
            ds = make_dataset(
                img, patient, study_uid, series_uid, sop_uid, i + 1, lat, view,
                bits_stored=bits, slope=slope, intercept=intercept, mono1=mono1,
            )
            ds.save_as(series_dir / f"img_{i:04d}.dcm", enforce_file_format=True)
            rows.append((sop_uid, "lesion" if lesion else "normal"))
            n_images += 1
            n_lesions += int(lesion)
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["SOPInstanceUID", "label"])
        w.writerows(rows)
    log.info(
        "synthetic tree: %d patients, %d images (%d with a lesion) -> %s",
        cfg.n_patients, n_images, n_lesions, out_dir,
    )
    return {"patients": cfg.n_patients, "images": n_images, "lesions": n_lesions}


def read_identifiers(dicom_root: str | Path) -> set[str]:
    """All patient identifiers in a tree (names, IDs, birth dates, accession numbers, UIDs): for PHI scans.

    Unreadable ``.dcm`` files are skipped.

    Args:
        dicom_root: the folder searched recursively for ``*.dcm``.

    Returns:
        PatientID, PatientBirthDate, AccessionNumber, PatientName (as stored and with ``^`` replaced by
        spaces) and the Study/Series/SOP Instance UIDs of every file.
    """
    found: set[str] = set()
    for path in Path(dicom_root).rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - a scan helper: unreadable files carry nothing to find
            continue
        for tag in ("PatientID", "PatientBirthDate", "AccessionNumber"):
            v = str(getattr(ds, tag, "") or "")
            if v:
                found.add(v)
        name = str(getattr(ds, "PatientName", "") or "")
        if name:
            found.add(name)
            found.add(" ".join(name.split("^")))
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            v = str(getattr(ds, tag, "") or "")
            if v:
                found.add(v)
    return found
