"""The labels table refuses what would flip labels silently, and reads what a hospital exports (issue 14)."""

from __future__ import annotations

import pytest

from medrobust.data.sources.base import LabelTable, SourceError

ROWS = "SOPInstanceUID,label,patient_id,comment\n1.2.3,lesion,P1,Läsion links\n1.2.4,normal,P2,unauffällig\n"


def test_a_latin1_table_is_refused_naming_its_line_until_its_encoding_is_set(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(ROWS.encode("latin-1"))
    with pytest.raises(SourceError) as err:
        LabelTable.from_path(path)
    msg = str(err.value)
    assert str(path) in msg and "line 2 is not utf-8 text" in msg and "data.labels_encoding" in msg
    table = LabelTable.from_path(path, encoding="latin-1")
    assert table.labels == {"1.2.3": "lesion", "1.2.4": "normal"}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_a_byte_order_mark_names_the_encoding(tmp_path, encoding):
    path = tmp_path / "labels.csv"
    path.write_bytes(ROWS.encode(encoding))  # Python writes the BOM for these three
    assert LabelTable.from_path(path).labels == {"1.2.3": "lesion", "1.2.4": "normal"}


def test_a_column_named_twice_is_refused():
    text = "SOPInstanceUID,label,label\n1.2.3,lesion,normal\n"
    with pytest.raises(SourceError, match=r"labels.csv: line 1 names the column\(s\) 'label' more than once"):
        LabelTable.from_text(text, "labels.csv")


def test_a_header_repeated_below_the_first_line_is_refused_naming_the_line():
    text = "SOPInstanceUID,label\n1.2.3,lesion\n1.2.4,normal\nSOPInstanceUID,label\n1.2.5,lesion\n"
    with pytest.raises(SourceError, match="labels.csv: line 4 repeats the header"):
        LabelTable.from_text(text, "labels.csv")


def test_labels_encoding_must_be_a_known_codec():
    from medrobust.config import ConfigError
    from medrobust.params import parse_params

    assert parse_params({"data": {"labels_encoding": "cp1252"}}).data.labels_encoding == "cp1252"
    with pytest.raises(ConfigError, match="data.labels_encoding.*unknown text encoding 'latin-9000'"):
        parse_params({"data": {"labels_encoding": "latin-9000"}})


def test_the_folder_source_passes_the_encoding_on(tmp_path):
    """data.labels_encoding reaches the table a real source builds."""
    from medrobust.data.sources import open_source
    from medrobust.params import parse_params

    from PIL import Image

    (tmp_path / "dicom").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "dicom" / "a.png")
    (tmp_path / "labels.csv").write_bytes(ROWS.encode("cp1252"))
    data = {"source": "dicom_folder", "dicom_dir": str(tmp_path / "dicom"), "labels_csv": str(tmp_path / "labels.csv")}
    with pytest.raises(SourceError, match="not utf-8 text"):
        open_source(parse_params({"data": data}).data)
    source = open_source(parse_params({"data": {**data, "labels_encoding": "cp1252"}}).data)
    assert source.table.labels["1.2.3"] == "lesion"
