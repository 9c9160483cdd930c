"""Ingest sources for public benchmark formats: MedMNIST, image folders, HAM10000, CMMD, two moons.

Each test writes a few files in the dataset's real format and ingests them through
``medrobust.stages.ingest.run`` (validation thresholds relaxed for tiny data), then checks counts,
splits, label mapping, grouping and the quarantine. Source-level checks that need no ingest run
(label tables, error cases) open the source directly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medrobust.data.deid import load_key, pseudonym
from medrobust.data.shards import load_split
from medrobust.data.sources import Rejected, SourceError, open_source
from medrobust.data.sources.medmnist import CHEST_FINDINGS
from medrobust.data.sources.two_moons import scale_points
from medrobust.stages import ingest
from tests.support.refs import read_quarantine, unmask_skipped
from tests.conftest import tiny_params

RELAXED = {"min_class_fraction": 0.0, "max_class_fraction": 1.0, "min_images_per_split": 1,
           "max_quarantine_fraction": 0.5}


def params_for(source: str, classes: list[str], **data: object):
    return tiny_params(data={"source": source, "classes": classes, **data}, validation=RELAXED)


def outputs(out: Path, root: Path | None = None, extra: tuple[str, ...] = ()) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(ingest.json, manifest, quarantine) of an ingest output folder (all columns as strings), with the
    public references of items under ``root`` (or in ``extra``) mapped back to raw paths (tests.support.refs)."""
    summary = json.loads((out / "ingest.json").read_text())
    summary["skipped_files"] = unmask_skipped(summary["skipped_files"], root, extra)
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    quarantine = read_quarantine(out / "quarantine.csv", root, extra, dtype=str, keep_default_na=False)
    return summary, manifest, quarantine


def image_id(uid: str) -> str:
    return pseudonym(load_key(), "image", uid)


def patient_id(group: str) -> str:
    return pseudonym(load_key(), "patient", group)


# --------------------------------------------------------------------------------------------------
# MedMNIST
# --------------------------------------------------------------------------------------------------
def write_npz(path: Path, labels: dict[str, np.ndarray], side: int = 28, colour: bool = False, seed: int = 0) -> Path:
    """A MedMNIST-style .npz: random uint8 images, the given labels, the six official keys."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, lab in labels.items():
        shape = (len(lab), side, side, 3) if colour else (len(lab), side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(lab, dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def column(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint8).reshape(-1, 1)


def test_medmnist_dermamnist_colour_official_splits_and_class_subset(tmp_path):
    """dermamnist_64.npz: flag and size from the name, colour -> luma, official splits kept,
    classes outside data.classes counted as excluded, an out-of-range label quarantined."""
    # index order of MedMNIST's INFO: akiec bcc bkl df mel nv vasc -> mel = 4, nv = 5
    labels = {"train": column([5, 5, 4, 5, 0, 4, 5, 7, 6, 5]),   # 7: out of range
              "val": column([4, 5, 5, 2]),
              "test": column([5, 4, 4, 1, 5, 3])}
    path = write_npz(tmp_path / "dermamnist_64.npz", labels, side=64, colour=True)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["val_images"][0] = (200, 100, 50)  # one flat colour image: its luma is known
    np.savez_compressed(path, **arrays)
    p = params_for("medmnist", ["mel", "nv"], medmnist={"path": str(path)})
    out = tmp_path / "out"
    ingest.run(p, out)
    summary, manifest, quarantine = outputs(out)

    assert summary["splits"] == {"train": 7, "val": 3, "test": 4}  # official splits, mel + nv only
    assert summary["split_by"] == "the source's official splits"
    assert summary["classes"] == {"mel": 5, "nv": 9}
    assert summary["excluded_classes"] == {"akiec": 1, "vasc": 1, "bkl": 1, "bcc": 1, "df": 1}
    assert quarantine[["file", "reason"]].values.tolist() == [["train[7]", "bad_label_value"]]
    assert "0..6" in quarantine["message"][0]
    # every manifest row: its official split and label, found through the pseudonymous id
    names = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    expected = {image_id(f"dermamnist-{s}-{i}"): (s, names[int(v)])
                for s, lab in labels.items() for i, v in enumerate(lab[:, 0]) if v in (4, 5)}
    got = {r.image_id: (r.split, r.label) for r in manifest.itertuples()}
    assert got == expected
    assert (manifest["height"] == "32").all() and manifest["patient_id"].nunique() == 14
    val = load_split(out, "val")
    row = val.manifest.index[val.manifest["image_id"] == image_id("dermamnist-val-0")][0]
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert val.x.shape == (3, 1, 32, 32)
    assert float(val.x[row].min()) == pytest.approx(luma, abs=1e-4)
    assert float(val.x[row].max()) == pytest.approx(luma, abs=1e-4)


def chest_labels() -> dict[str, np.ndarray]:
    """Hand-made 14-finding label matrices: train 3 normal / 5 finding; val 2 / 2; test 2 / 3."""
    def rows(*bits: str) -> np.ndarray:
        return np.array([[int(c) for c in b] for b in bits], dtype=np.uint8)

    zero = "0" * 14
    return {
        "train": rows(zero, "00100000000000", "11000000000000", zero, "00000000000001", "00100000000100",
                      zero, "00000010000000"),
        "val": rows(zero, "00100000000000", zero, "01000000000000"),
        "test": rows("00000000000010", zero, "00110000000000", zero, "10000000000000"),
    }


def test_medmnist_chestmnist_any_finding(tmp_path):
    labels = chest_labels()
    path = write_npz(tmp_path / "chestmnist.npz", labels)
    p = params_for("medmnist", ["normal", "finding"], medmnist={"path": str(path), "multilabel": "any"})
    out = tmp_path / "out"
    ingest.run(p, out)
    summary, manifest, quarantine = outputs(out)

    assert quarantine.empty
    assert summary["splits"] == {"train": 8, "val": 4, "test": 5}
    assert summary["classes"] == {"normal": 7, "finding": 10}
    per_split = manifest.groupby(["split", "label"]).size().to_dict()
    assert per_split == {("train", "normal"): 3, ("train", "finding"): 5, ("val", "normal"): 2,
                         ("val", "finding"): 2, ("test", "normal"): 2, ("test", "finding"): 3}
    # the full 14-bit vector travels with each image
    expected = {image_id(f"chestmnist-{s}-{i}"): "".join(map(str, row))
                for s, lab in labels.items() for i, row in enumerate(lab)}
    assert dict(zip(manifest["image_id"], manifest["labels_multi"], strict=True)) == expected


def test_medmnist_chestmnist_one_finding_and_bad_vector(tmp_path):
    labels = chest_labels()
    labels["test"][4, 3] = 2  # not a 0/1 vector
    path = write_npz(tmp_path / "chestmnist_128.npz", labels, side=128)
    p = params_for("medmnist", ["absent", "present"], medmnist={"path": str(path), "multilabel": "effusion"})
    src = open_source(p.data)
    assert src.classes == ("absent", "present") and src.size == 128
    got: dict[str, str] = {}
    for item in src.items():
        try:
            got[item.ref] = src.label(item, {})
        except Rejected as rej:
            got[item.ref] = rej.reason
    effusion = CHEST_FINDINGS.index("effusion")
    assert effusion == 2
    present = {f"{s}[{i}]" for s, lab in labels.items() for i, row in enumerate(lab) if row[effusion] == 1}
    assert got.pop("test[4]") == "bad_label_value"
    assert {r for r, v in got.items() if v == "present"} == present - {"test[4]"}
    assert sorted(present) == ["test[2]", "train[1]", "train[5]", "val[1]"]
    assert sum(v == "absent" for v in got.values()) == 17 - 1 - 4


@pytest.mark.parametrize("flag, names", [
    ("pneumoniamnist", ("normal", "pneumonia")),
    ("breastmnist", ("malignant", "normal_benign")),
    ("organamnist", ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                     "lung-left", "lung-right", "pancreas", "spleen")),
])
def test_medmnist_label_names_follow_medmnist_index_order(tmp_path, flag, names):
    n = len(names)
    labels = {"train": column(list(range(n))), "val": column([n - 1]), "test": column([0])}
    path = write_npz(tmp_path / f"{flag}_64.npz", labels, side=64)
    src = open_source(params_for("medmnist", list(names[:2]), medmnist={"path": str(path)}).data)
    assert src.flag == flag and src.classes == names and src.counts == {"train": n, "val": 1, "test": 1}
    items = list(src.items())
    assert [src.label(i, {}) for i in items] == [*names, names[-1], names[0]]
    assert items[0].group == "train-0" and items[0].uid == f"{flag}-train-0" and items[0].split == "train"


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good(n: int = 4, side: int = 28) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"{s}_{k}": (rng.integers(0, 256, (n, side, side), dtype=np.uint8) if k == "images"
                         else np.zeros((n, 1), np.uint8))
            for s in ("train", "val", "test") for k in ("images", "labels")}


def test_medmnist_missing_keys_raise_listing_found_and_expected(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "pneumoniamnist.npz", x_train=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
                 y_train=np.zeros((4, 1), np.uint8))
    p = params_for("medmnist", ["normal", "pneumonia"], medmnist={"path": str(path)})
    with pytest.raises(ingest.IngestError) as exc:
        ingest.run(p, tmp_path / "out")
    msg = str(exc.value)
    assert "missing keys" in msg and "['x_train', 'y_train']" in msg
    assert "'train_images'" in msg and "'test_labels'" in msg and "data.medmnist.path" in msg
    assert not (tmp_path / "out").exists()


def test_medmnist_object_array_is_refused_not_unpickled(tmp_path):
    arrays = _good()
    arrays["val_labels"] = np.array([[0], [1], "x", None], dtype=object)
    path = _save(tmp_path / "pneumoniamnist.npz", **arrays)
    p = params_for("medmnist", ["normal", "pneumonia"], medmnist={"path": str(path)})
    with pytest.raises(ingest.IngestError, match=r"val_labels is an object array .*never unpickled"):
        ingest.run(p, tmp_path / "out")


@pytest.mark.parametrize("name, change, flag, match", [
    ("pneumoniamnist_64.npz", {}, "", r"images are 28x28 but the file name says 64 px"),
    ("pneumoniamnist.npz", {"test_labels": np.zeros((3, 1), np.uint8)}, "",
     r"test_images holds 4 images but test_labels holds 3 labels"),
    ("pneumoniamnist.npz", {"train_labels": np.zeros((4, 2), np.uint8)}, "", r"train_labels has shape \(4, 2\)"),
    ("pneumoniamnist.npz", {"train_labels": np.zeros((4, 1), np.float32)}, "", r"dtype float32; expected integer"),
    ("mystery.npz", {}, "", r"set data.medmnist.flag to one of"),
    ("breastmnist.npz", {}, "pneumoniamnist", r"file name 'breastmnist.npz' says breastmnist"),
    ("data.npz", {}, "bloodmnist", r"flag 'bloodmnist' is not supported; allowed values"),
])
def test_medmnist_whole_file_problems_are_source_errors(tmp_path, name, change, flag, match):
    path = _save(tmp_path / name, **{**_good(), **change})
    p = params_for("medmnist", ["normal", "pneumonia"], medmnist={"path": str(path), "flag": flag})
    with pytest.raises(ingest.IngestError, match=match):
        ingest.run(p, tmp_path / "out")


def test_medmnist_multilabel_setting_is_checked(tmp_path):
    path = _save(tmp_path / "pneumoniamnist.npz", **_good())
    with pytest.raises(SourceError, match="applies to chestmnist only"):
        open_source(params_for("medmnist", ["normal", "pneumonia"],
                               medmnist={"path": str(path), "multilabel": "edema"}).data)
    chest = write_npz(tmp_path / "chestmnist.npz", chest_labels())
    with pytest.raises(SourceError, match="multilabel 'lungs' is not allowed"):
        open_source(params_for("medmnist", ["absent", "present"], medmnist={"path": str(chest), "multilabel": "lungs"}).data)


# --------------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------------
def write_png(path: Path, seed: int, mode: str = "L") -> None:
    rng = np.random.default_rng(seed)
    shape = (24, 20) if mode == "L" else (24, 20, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def test_image_folder_classes_groups_and_quarantine(tmp_path):
    root = tmp_path / "images"
    groups = []
    for k in range(16):  # 8 patients with one normal and one pneumonia image each
        cls = ("normal", "pneumonia")[k % 2]
        rel = f"{cls}/p{k // 2}_{k}.png" if k != 5 else f"{cls}/site2/p{k // 2}_{k}.png"
        write_png(root / rel, seed=k, mode="RGB" if k == 3 else "L")
        groups.append((rel, f"patient-{k // 2}"))
    (root / "pneumonia" / "notes.txt").write_text("not an image")           # quarantined: unreadable
    write_png(root / "normal" / "orphan.png", seed=99)                        # no groups row: quarantined
    (root / "normal" / ".DS_Store").write_bytes(b"\0\1")                      # skipped: dot-file
    (root / "README.md").write_text("no class")                             # skipped: no class folder
    (root / "empty_class").mkdir()
    groups_csv = tmp_path / "groups.csv"
    with groups_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "group"])
        w.writerows([*groups, ("normal/gone.png", "patient-9")])           # image_missing
    p = params_for("image_folder", ["normal", "pneumonia"],
                   image_folder={"root": str(root), "groups_csv": str(groups_csv)})
    out = tmp_path / "out"
    ingest.run(p, out)
    summary, manifest, quarantine = outputs(out, root, ("normal/gone.png",))

    assert summary["classes"] == {"normal": 8, "pneumonia": 8}
    assert sorted(summary["skipped_files"]) == ["README.md", "normal/.DS_Store"]
    assert quarantine[["file", "reason"]].values.tolist() == [["normal/orphan.png", "missing_patient_id"],
                                                              ["pneumonia/notes.txt", "unreadable"],
                                                              ["groups:normal/gone.png", "image_missing"]]
    assert summary["split_by"] == "patient-level split from data.split"
    assert summary["patients"] == 8
    # both images of a patient share one pseudonymous id and one split
    expected = {image_id(rel): (patient_id(g), ("normal", "pneumonia")[k % 2]) for k, (rel, g) in enumerate(groups)}
    got = {r.image_id: (r.patient_id, r.label) for r in manifest.itertuples()}
    assert got == expected
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert (manifest.groupby("patient_id").size() == 2).all()

    # without groups_csv each image is its own group; classes are the sorted folder names
    src = open_source(params_for("image_folder", ["normal", "pneumonia"], image_folder={"root": str(root)}).data)
    assert src.classes == ("empty_class", "normal", "pneumonia")
    items = {i.ref: i for i in src.items()}
    assert items["pneumonia/site2/p2_5.png"].group == "pneumonia/site2/p2_5.png"
    assert items["pneumonia/site2/p2_5.png"].label == "pneumonia"
    assert len(items) == 18 and src.leftovers() == []


def test_image_folder_errors(tmp_path):
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png", 0)
    with pytest.raises(SourceError, match="no class folders"):
        open_source(params_for("image_folder", ["a", "b"], image_folder={"root": str(tmp_path / "flat")}).data)
    write_png(tmp_path / "tree" / "a" / "x.png", 0)
    bad = tmp_path / "groups.csv"
    bad.write_text("path,patient\nx.png,1\n")
    with pytest.raises(SourceError, match=r"needs the columns 'file'.*found \['path', 'patient'\]"):
        open_source(params_for("image_folder", ["a", "b"],
                               image_folder={"root": str(tmp_path / "tree"), "groups_csv": str(bad)}).data)
    # data.classes must be folder names
    with pytest.raises(ingest.IngestError, match=r"not classes of the image_folder source; allowed values: \['a'\]"):
        ingest.run(params_for("image_folder", ["a", "b"], image_folder={"root": str(tmp_path / "tree")}),
                   tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# HAM10000
# --------------------------------------------------------------------------------------------------
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]


def test_ham10000_lesion_grouping_and_leftovers(tmp_path):
    images = tmp_path / "ham"
    rows = []
    n = 0
    # 12 lesions, 1-3 images each; dx cycles through nv / mel / bkl, one lesion is df (not in data.classes)
    for lesion in range(12):
        dx = "df" if lesion == 11 else ("nv", "mel", "bkl")[lesion % 3]
        for _ in range(1 + lesion % 3):
            iid = f"ISIC_{24306 + n:07d}"
            part = "HAM10000_images_part_1" if n % 2 else "HAM10000_images_part_2"
            path = images / part / f"{iid}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(n).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
            rows.append([f"HAM_{lesion:07d}", iid, dx, "histo", f"{40 + lesion}.0", "female", "scalp", "vidir"])
            n += 1
    # Kaggle's second, byte-identical copy of one image
    copy_dir = images / "ham10000_images_part_1"
    copy_dir.mkdir()
    (copy_dir / "ISIC_0024306.jpg").write_bytes((images / "HAM10000_images_part_2" / "ISIC_0024306.jpg").read_bytes())
    # an image without a metadata row, a row without an image, a stray CSV
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(images / "HAM10000_images_part_1" / "ISIC_9999999.jpg")
    rows.append(["HAM_0000099", "ISIC_8888888", "mel", "histo", "55.0", "male", "back", "vidir"])
    (images / "hmnist_28_28_RGB.csv").write_text("pixel0000,label\n1,2\n")
    meta = tmp_path / "HAM10000_metadata.csv"
    pd.DataFrame(rows, columns=HAM_COLUMNS).to_csv(meta, index=False)

    p = params_for("ham10000", ["bkl", "mel", "nv"], ham10000={"images_dir": str(images), "metadata_csv": str(meta)})
    out = tmp_path / "out"
    ingest.run(p, out)
    summary, manifest, quarantine = outputs(out, images, ("ISIC_8888888",))

    lesions = {r[1]: r[0] for r in rows}
    dx = {r[1]: r[2] for r in rows}
    assert summary["classes"] == {"nv": 4, "mel": 8, "bkl": 9}
    assert summary["excluded_classes"] == {"df": 3}
    assert summary["patients"] == 11
    assert quarantine[["file", "reason"]].values.tolist() == [
        ["HAM10000_images_part_1/ISIC_9999999.jpg", "missing_label"],
        ["metadata:ISIC_8888888", "image_missing"],
    ]
    assert "hmnist_28_28_RGB.csv" in summary["skipped_files"]
    assert "ham10000_images_part_1/ISIC_0024306.jpg (copy of HAM10000_images_part_2/ISIC_0024306.jpg)" in \
        summary["skipped_files"]
    # labels = dx; group = lesion: no lesion in two splits, every image of a lesion under one pseudonym
    expected = {image_id(i): (patient_id(lesions[i]), dx[i]) for i in lesions if dx[i] in ("bkl", "mel", "nv")
                and i != "ISIC_8888888"}
    assert {r.image_id: (r.patient_id, r.label) for r in manifest.itertuples()} == expected
    split_of_lesion = manifest.groupby("patient_id")["split"].nunique()
    assert (split_of_lesion == 1).all() and set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["dx_type"] == "histo").all()
    # age / sex / localization are not kept anywhere
    assert not {"age", "sex", "localization"} & set(manifest.columns)
    for f in ("manifest.csv", "quarantine.csv", "ingest.json"):
        text = (out / f).read_text()
        assert "scalp" not in text and "female" not in text and "HAM_00" not in text


def test_ham10000_conflicting_rows_and_bad_columns(tmp_path):
    images = tmp_path / "ham"
    images.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(images / "ISIC_0000001.jpg")
    meta = tmp_path / "meta.csv"
    pd.DataFrame([["HAM_1", "ISIC_0000001", "nv", "histo", "", "", "", ""],
                  ["HAM_1", "ISIC_0000001", "mel", "histo", "", "", "", ""]],
                 columns=HAM_COLUMNS).to_csv(meta, index=False)
    ham = {"images_dir": str(images), "metadata_csv": str(meta)}
    src = open_source(params_for("ham10000", ["mel", "nv"], ham10000=ham).data)
    (item,) = list(src.items())
    with pytest.raises(Rejected) as rej:
        src.label(item, {})
    assert rej.value.reason == "conflicting_labels" and "'nv' vs 'mel'" in rej.value.message
    meta.write_text("image,diagnosis\nISIC_0000001,nv\n")
    with pytest.raises(SourceError, match=r"missing columns \['lesion_id', 'image_id', 'dx'\]"):
        open_source(params_for("ham10000", ["mel", "nv"], ham10000=ham).data)


# --------------------------------------------------------------------------------------------------
# CMMD
# --------------------------------------------------------------------------------------------------
MG = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def write_mammogram(path: Path, patient: str, side: str | None, seed: int) -> str:
    """A small MONOCHROME2 MG image as TCIA's CMMD holds them; returns its SOPInstanceUID."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MG, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = patient
    ds.Modality = "MG"
    if side is not None:
        ds.ImageLaterality = side
    ds.Rows, ds.Columns = 40, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (40, 32), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def test_cmmd_labels_per_side_from_the_clinical_xlsx(tmp_path):
    root = tmp_path / "manifest-1616439774456"
    table: list[list[object]] = []
    truth: dict[str, tuple[str, str]] = {}  # SOPInstanceUID -> (patient, label)
    seed = 0
    for k in range(1, 11):  # D1-0001..D1-0010: left benign, right malignant for odd k; swapped for even k
        pid = f"D1-{k:04d}"
        cls = {"L": "Benign", "R": "Malignant"} if k % 2 else {"L": "Malignant", "R": "Benign"}
        for side in ("L", "R"):
            table.append([pid, side, 50 + k, 1, "calcification", cls[side], ""])
            for j in range(1 + (k + (side == "R")) % 2):
                seed += 1
                uid = write_mammogram(root / "CMMD" / pid / "07-18-2010-NA-NA-79377" / f"1.000000-NA-{side}"
                                      / f"1-{j + 1}.dcm", pid, side, seed)
                truth[uid] = (pid, cls[side].lower())
    table.append(["D1-0011", "L", 60, 1, "mass", "Malignant", ""])           # no images: image_missing
    table.append(["D1-0012", "R", 61, 1, "mass", "Benign", ""])              # conflicting rows
    table.append(["D1-0012", "R", 61, 1, "mass", "Malignant", ""])
    write_mammogram(root / "CMMD" / "D1-0012" / "s" / "r" / "1-1.dcm", "D1-0012", "R", 101)
    write_mammogram(root / "CMMD" / "D1-0013" / "s" / "l" / "1-1.dcm", "D1-0013", "L", 102)  # no row
    write_mammogram(root / "CMMD" / "D1-0001" / "s" / "x" / "1-1.dcm", "D1-0001", None, 103)  # no laterality
    (root / "metadata.csv").write_text("Series UID,Subject ID\n1.2,D1-0001\n")
    xlsx = tmp_path / "CMMD_clinicaldata_revision.xlsx"
    pd.DataFrame(table, columns=["ID1", "LeftRight", "Age", "number", "abnormality", "classification",
                                 "subtype"]).to_excel(xlsx, index=False)

    p = params_for("cmmd", ["benign", "malignant"], cmmd={"dicom_dir": str(root), "clinical_table": str(xlsx)})
    out = tmp_path / "out"
    ingest.run(p, out)
    for f in ("quarantine.csv", "ingest.json"):  # the folder names are PatientIDs: only keyed hashes go out
        assert "D1-" not in (out / f).read_text(), f
    summary, manifest, quarantine = outputs(out, root)

    assert summary["images"] == len(truth) == 30
    assert summary["classes"] == {"benign": 20, "malignant": 10}
    assert summary["skipped_files"] == ["metadata.csv"]
    assert summary["patients"] == 10
    reasons = dict(zip(quarantine["file"], quarantine["reason"], strict=True))
    assert reasons == {
        "CMMD/D1-0012/s/r/1-1.dcm": "conflicting_labels",
        "CMMD/D1-0013/s/l/1-1.dcm": "missing_label",
        "CMMD/D1-0001/s/x/1-1.dcm": "missing_label",
        "clinical:CMMD_clinicaldata_revision.xlsx:row 22": "image_missing",
    }
    # the label of every image is its own breast's row; both breasts of a patient share one split
    got = {r.image_id: (r.patient_id, r.label) for r in manifest.itertuples()}
    assert got == {image_id(uid): (patient_id(pid), label) for uid, (pid, label) in truth.items()}
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(manifest["laterality"]) == {"L", "R"}
    # PatientIDs appear in no message (file refs are the tree's own relative paths)
    assert not quarantine["message"].str.contains("D1-").any()
    assert "D1-" not in (out / "manifest.csv").read_text()

    csv_table = tmp_path / "clinical.csv"
    pd.read_excel(xlsx).to_csv(csv_table, index=False)
    src = open_source(params_for("cmmd", ["benign", "malignant"],
                                 cmmd={"dicom_dir": str(root), "clinical_table": str(csv_table)}).data)
    assert src.label(next(iter(src.items())), {"PatientID": "D1-0002", "Laterality": "L"}) == "malignant"


def test_cmmd_table_without_required_columns(tmp_path):
    write_mammogram(tmp_path / "CMMD" / "D1-0001" / "a" / "b" / "1-1.dcm", "D1-0001", "L", 0)
    bad = tmp_path / "clinical.csv"
    bad.write_text("PatientID,side,label\nD1-0001,L,Benign\n")
    with pytest.raises(SourceError, match=r"missing columns \['ID1', 'LeftRight', 'classification'\]"):
        open_source(params_for("cmmd", ["benign", "malignant"],
                               cmmd={"dicom_dir": str(tmp_path / "CMMD"), "clinical_table": str(bad)}).data)


# --------------------------------------------------------------------------------------------------
# two moons
# --------------------------------------------------------------------------------------------------
def test_two_moons_shards_ranges_and_reproducibility(tmp_path):
    moons = {"n_train": 60, "n_test": 30, "noise": 0.2, "seed": 3}
    p = params_for("two_moons", ["moon0", "moon1"], two_moons=moons)
    out = tmp_path / "out"
    ingest.run(p, out)
    summary, manifest, quarantine = outputs(out)

    assert quarantine.empty
    assert summary["splits"] == {"train": 54, "val": 6, "test": 30}  # val = last 10 % of the train draw
    assert summary["classes"] == {"moon0": 45, "moon1": 45}          # make_moons: n // 2 per class per draw
    assert summary["split_by"] == "the source's official splits"
    src = open_source(p.data)
    drawn = src.splits()
    for split in ("train", "val", "test"):
        data = load_split(out, split)
        assert tuple(data.x.shape) == (summary["splits"][split], 1, 1, 2)
        assert float(data.x.min()) >= 0.0 and float(data.x.max()) <= 1.0
        # the stored points and labels are exactly the source's, row by row
        points, labels = drawn[split]
        index = {image_id(f"two_moons-{split}-{i}"): i for i in range(len(points))}
        order = [index[i] for i in data.manifest["image_id"]]
        np.testing.assert_array_equal(data.x[:, 0, 0].numpy(), points[order])
        np.testing.assert_array_equal(data.y.numpy(), labels[order])
    # the same seed gives the same points; another seed does not; train and test are separate draws
    again = open_source(p.data).splits()
    for split in drawn:
        np.testing.assert_array_equal(drawn[split][0], again[split][0])
    other = open_source(params_for("two_moons", ["moon0", "moon1"], two_moons={**moons, "seed": 4}).data).splits()
    assert not np.array_equal(drawn["test"][0], other["test"][0])
    assert not np.array_equal(drawn["train"][0][:30], drawn["test"][0])


def test_two_moons_fixed_affine_map():
    pts = np.array([[-1.5, -1.75], [2.5, 2.25], [0.5, 0.25], [10.0, 0.25], [-1.0, 0.0]])
    scaled, outside = scale_points(pts)
    np.testing.assert_allclose(scaled, [[0, 0], [1, 1], [0.5, 0.5], [1, 0.5], [0.125, 0.4375]])
    assert outside == 1 and scaled.dtype == np.float32
    # the noise-free moons lie well inside the square
    from sklearn.datasets import make_moons

    clean, _ = scale_points(make_moons(200, noise=0.0)[0])
    assert clean.min() >= 0.12 and clean.max() <= 0.88


def test_a_medmnist_file_written_with_version_3_npy_headers_is_read(tmp_path):
    """``.npy`` 3.0 (UTF-8 headers) is read like 1.0 and 2.0, still without pickle (issue 14)."""
    import io
    import zipfile

    from numpy.lib import format as npy

    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", 20), ("val", 6), ("test", 6)):
            for key, arr in ((f"{split}_images", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)),
                             (f"{split}_labels", rng.integers(0, 2, (n, 1), dtype=np.uint8))):
                buf = io.BytesIO()
                npy.write_array(buf, arr, version=(3, 0))
                assert buf.getvalue()[6:8] == b"\x03\x00"
                z.writestr(f"{key}.npy", buf.getvalue())
    params = tiny_params(data={"source": "medmnist", "classes": ["normal", "pneumonia"],
                               "medmnist": {"path": str(path)}})
    result = ingest.run(params, tmp_path / "out")
    assert result.n_images == 32 and result.n_quarantined == 0
