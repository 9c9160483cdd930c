"""No patient identifier leaves ingest: every output file and every MLflow record is searched."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from medrobust.data.synthetic import read_identifiers


def _needles(pipeline_run) -> set[str]:
    ids = read_identifiers(pipeline_run.raw / "dicom")
    # sanity: the source really holds names, IDs, birth dates and UIDs to look for
    assert any("^" in i for i in ids) and any(i.startswith("MRN") for i in ids) and len(ids) > 50
    return ids


def _hits(data: bytes, needles: set[str]) -> set[str]:
    return {n for n in needles if n.encode() in data}


def test_no_identifier_in_any_output_file(pipeline_run):
    needles = _needles(pipeline_run)
    outputs = [pipeline_run.dataset, pipeline_run.advgen, pipeline_run.model, pipeline_run.evaluation,
               pipeline_run.decision, pipeline_run.root / "mlartifacts"]
    scanned = 0
    for out in outputs:
        files = [out] if out.is_file() else [p for p in out.rglob("*") if p.is_file()]
        for f in files:
            hits = _hits(f.read_bytes(), needles)
            assert not hits, f"{f} contains identifiers {sorted(hits)[:3]}"
            scanned += 1
    assert scanned > 20


def test_no_identifier_in_mlflow_records(pipeline_run):
    needles = _needles(pipeline_run)
    db = Path(pipeline_run.tracking_uri.removeprefix("sqlite:///"))
    con = sqlite3.connect(db)
    tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    rows = 0
    for table in tables:
        for row in con.execute(f'select * from "{table}"'):  # noqa: S608 - table names from sqlite_master
            text = "\x1f".join("" if v is None else str(v) for v in row).encode()
            hits = _hits(text, needles)
            assert not hits, f"MLflow table {table} holds identifiers {sorted(hits)[:3]}"
            rows += 1
    con.close()
    assert rows > 50  # params, metrics, tags, registered model versions were all searched
    # the raw bytes too (free pages, indexes)
    assert not _hits(db.read_bytes(), needles)


def test_the_scan_would_find_an_identifier(pipeline_run, tmp_path):
    needles = _needles(pipeline_run)
    leaked = tmp_path / "leak.csv"
    leaked.write_text(f"id\n{sorted(n for n in needles if n.startswith('MRN'))[0]}\n")
    assert _hits(leaked.read_bytes(), needles)


def test_medrobust_audit_finds_nothing_in_a_whole_pipeline_run(pipeline_run, tmp_path):
    """The `medrobust audit` scanner over every stage output, the MLflow database and its artifacts."""
    from typer.testing import CliRunner

    from medrobust.cli import app
    from tests.support.phi import assert_no_phi

    db = Path(pipeline_run.tracking_uri.removeprefix("sqlite:///"))
    outputs = [pipeline_run.dataset, pipeline_run.advgen, pipeline_run.model, pipeline_run.evaluation,
               pipeline_run.decision, pipeline_run.root / "mlartifacts", db]
    scanned = assert_no_phi([pipeline_run.raw / "dicom"], outputs, min_identifiers=100)
    assert scanned > 20
    report = tmp_path / "audit.json"
    args = ["audit", "--source", str(pipeline_run.raw / "dicom"), "--report", str(report), *map(str, outputs)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    audit = json.loads(report.read_text())
    assert audit["findings"] == [] and audit["files_scanned"] == scanned
