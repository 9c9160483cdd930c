"""`medrobust bench attacks` runs end to end (a smoke test on tiny data; ratios are not asserted here:
timings belong to the benchmark, not to unit tests)."""

from __future__ import annotations

import pytest

from medrobust.bench.attacks import bench_attacks, format_report, to_markdown
from tests.conftest import tiny_params


@pytest.mark.integration
def test_bench_attacks_reports_every_attack_and_identical_early_stop(tmp_path):
    pytest.importorskip("torchattacks")
    report = bench_attacks(tiny_params(), repeats=1, dataset_dir=tmp_path / "none", n_images=16)
    names = [r["attack"] for r in report["throughput"]]
    assert {"fgsm", "bim", "pgd", "pgdl2", "mifgsm", "cw", "apgd_ce", "square", "autoattack"} <= set(names)
    pgd = next(r for r in report["throughput"] if r["attack"] == "pgd")
    assert pgd["ours"] > 0 and pgd["reference"] > 0 and pgd["ratio"] > 0
    for e in report["early_stop"]:
        assert e["identical"] and e["accuracy_early_stop"] == e["accuracy_all_points"]
    text = format_report(report)
    assert "torchattacks" in text and "speedup" in text
    assert "`medrobust bench attacks --repeats 1`" in to_markdown(report, "medrobust bench attacks --repeats 1")
