"""The check stage: per-stage digests of the resolved settings, and a warning for inputs DVC cannot track."""

from __future__ import annotations

import logging

import yaml

from medrobust.params import Params, parse_params
from medrobust.stages import check


def _digests(raw: dict) -> dict[str, str]:
    return {stage: check.digest(s) for stage, s in check.stage_settings(parse_params(raw)).items()}


def test_a_default_written_out_changes_no_digest_and_another_method_changes_only_register():
    base = _digests({})
    assert _digests({"seed": 42, "train": {"methods": {"pgd_at": {"warmup_epochs": 4}}}}) == base
    other = _digests({"train": {"methods": {"trades": {"beta": 3.0}}}})
    assert other == base                                   # trades is not the active method
    changed = _digests({"train": {"methods": {"pgd_at": {"steps": 3}}}})
    assert {s for s in base if base[s] != changed[s]} == {"train"}
    gate = _digests({"register": {"gate_eps": "4/255"}})
    assert {s for s in base if base[s] != gate[s]} == {"train", "evaluate", "register"}  # selection attacks at the gate


def test_run_writes_one_digest_per_stage_and_warns_about_an_input_outside_data_raw(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / ".medrobust" / "stage-params.yaml"
    with caplog.at_level(logging.WARNING, logger="medrobust.stages.check"):
        check.run(Params(), out)
    assert not caplog.records
    assert set(yaml.safe_load(out.read_text())) == {"synthesize", "ingest", "advgen", "train", "evaluate", "register"}
    outside = tmp_path.parent / "export"
    params = parse_params({"data": {"source": "dicom_folder", "dicom_dir": str(outside),
                                    "labels_csv": "data/raw/labels.csv"}})
    assert check.untracked_inputs(params) == [("data.dicom_dir", str(outside))]
    with caplog.at_level(logging.WARNING, logger="medrobust.stages.check"):
        check.run(params, out)
    (record,) = caplog.records
    assert "data.dicom_dir" in record.getMessage() and "dvc repro -f ingest" in record.getMessage()
    # a PACS has no local input
    assert check.untracked_inputs(parse_params({"data": {"source": "pacs", "dicom_dir": "/elsewhere"}})) == []
