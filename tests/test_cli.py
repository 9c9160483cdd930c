"""The CLI is a thin shell: user errors exit 2 with one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import write_params

BIN = Path(sys.executable).parent


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "medrobust"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_bad_params_exit_2_naming_the_key(tmp_path):
    write_params(tmp_path / "params.yaml", {"train": {"method": "magic"}})
    res = _cli("train", cwd=tmp_path)
    assert res.returncode == 2
    assert "train.method" in res.stderr and "pgd_at" in res.stderr and "'magic'" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_dicom_folder_is_a_clear_error(tmp_path):
    write_params(tmp_path / "params.yaml", {"data": {"dicom_dir": "nowhere", "labels_csv": "nowhere.csv"}})
    res = _cli("ingest", cwd=tmp_path)
    assert res.returncode == 2 and "nowhere" in res.stderr and "Traceback" not in res.stderr


def test_params_show_prints_params_yaml_merged_over_the_defaults(tmp_path):
    import yaml

    write_params(tmp_path / "params.yaml", {"train": {"epochs": 3, "methods": {"pgd_at": {"steps": 2}}}})
    shown = yaml.safe_load(_cli("params", "show", "train", cwd=tmp_path).stdout)
    assert shown["epochs"] == 3 and shown["batch_size"] == 32           # set here; the default
    assert shown["methods"]["pgd_at"]["steps"] == 2                     # set here, merged key by key
    assert shown["methods"]["pgd_at"]["warmup_epochs"] == 4             # the project's default for pgd_at
    assert yaml.safe_load(_cli("params", "show", "train.epochs", "--defaults", cwd=tmp_path).stdout) == 15
    res = _cli("params", "show", "train.epoch", cwd=tmp_path)
    assert res.returncode == 2 and "'epoch'" in res.stderr and "epochs" in res.stderr and "Traceback" not in res.stderr
