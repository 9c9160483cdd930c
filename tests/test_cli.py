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
