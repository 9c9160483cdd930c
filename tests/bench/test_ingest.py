"""`medrobust bench ingest`: both paths decode the same files, and the ratio is what the table says."""

from __future__ import annotations

import pytest

from medrobust.bench.ingest import bench_ingest, to_markdown
from medrobust.data import pool
from tests.conftest import tiny_params


def test_bench_ingest_times_both_paths_on_the_same_files(monkeypatch):
    params = tiny_params().updated({"data": {"workers": 2}})
    monkeypatch.setattr(pool, "POOL_MIN_ITEMS", 16)  # exercise the worker pool on a small run
    report = bench_ingest(params, n_files=60, repeats=1, stage=True)
    assert report["n_files"] == 60 and report["ingested"] == 60 and report["workers"] == 2
    for key in ("bare_pydicom_files_per_s", "medrobust_files_per_s", "medrobust_one_process_files_per_s",
                "stage_files_per_s"):
        assert report[key] > 0, key
    assert report["ratio"] == pytest.approx(report["medrobust_files_per_s"] / report["bare_pydicom_files_per_s"])
    md = to_markdown(report, "medrobust bench ingest --n-files 60")
    assert f"**{report['ratio']:.2f}**" in md and "2 decode workers" in md
