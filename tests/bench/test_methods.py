"""`medrobust bench methods`: every method trains at the same budget and is attacked."""

from __future__ import annotations

import pytest

from medrobust.bench.methods import bench_methods, to_markdown
from tests.conftest import tiny_params


@pytest.mark.integration
def test_bench_methods_trains_and_attacks_each_method(pipeline_run):
    report = bench_methods(tiny_params(), methods=["standard", "pgd_at"], dataset_dir=pipeline_run.dataset, epochs=1)
    assert [r["method"] for r in report["rows"]] == ["standard", "pgd_at"]
    for r in report["rows"]:
        assert 0.0 <= r["pgd_accuracy"] <= r["clean_accuracy"] and r["fgsm_accuracy"] <= r["clean_accuracy"]
        assert r["model"]["backbone"] == "small_cnn" and r["train_seconds"] > 0
    md = to_markdown(report, "medrobust bench methods")
    assert "| pgd_at |" in md and "PGD-20" in md
