"""`medrobust bench certify` end to end on a tiny budget (the numbers themselves are the benchmark's:
`benchmarks/certify.md`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medrobust.cli import app
from tests.conftest import tiny_raw, write_params

pytest.importorskip("art", reason="ART is the speed reference (make setup-test installs it)")


def test_bench_certify_trains_certifies_times_and_writes_its_table(tmp_path, pipeline_run):
    params = write_params(tmp_path / "params.yaml", tiny_raw())
    out = tmp_path / "certify"
    result = CliRunner().invoke(app, ["bench", "certify", "--params", str(params), "--methods", "standard,gaussian_noise",
                                      "--n", "200", "--epochs", "1", "--repeats", "1", "--dataset",
                                      str(pipeline_run.dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in report["rows"]] == ["standard", "gaussian_noise"]
    for row in report["rows"]:
        accs = [row["certified"][f"{r:g}"]["value"] for r in report["radii"]]
        assert accs == sorted(accs, reverse=True) and row["certified"]["0"]["n"] == row["clean_accuracy"]["n"]
    speed = report["speed"]
    assert speed["samples"] == 8 * (100 + 200) and all(v > 0 for v in speed["samples_per_second"].values())
    assert speed["vs_art"] == pytest.approx(speed["samples_per_second"]["ours"] / speed["samples_per_second"]["art"])
    md = out.with_suffix(".md").read_text()
    assert "`medrobust bench certify --methods standard,gaussian_noise --n 200 --epochs 1 --repeats 1" in md
    assert "| gaussian_noise |" in md and "ART 1.20.1" in md
