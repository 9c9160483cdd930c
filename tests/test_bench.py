"""`medrobust bench attacks` runs end to end (a smoke test on tiny data; ratios are not asserted here:
timings belong to the benchmark, not to unit tests)."""

from __future__ import annotations

import pytest

from medrobust.bench import bench_attacks, format_report
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


def test_bench_train_times_every_variant_against_standard():
    from medrobust.bench_train import PGD_STEPS, bench_train, to_markdown

    report = bench_train(tiny_params(), methods=["pgd_at", "trades"], n_batches=1, repeats=1)
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"standard", "trades", *(f"pgd_at (k={k})" for k in PGD_STEPS)}
    assert rows["standard"]["ratio"] == 1.0
    assert all(rows[f"pgd_at (k={k})"]["bound"] == pytest.approx(1.05 * (k + 1)) for k in PGD_STEPS)
    assert "bound" not in rows["trades"] and "| trades |" in to_markdown(report, "cmd")
    with pytest.raises(KeyError, match="unknown training method"):
        bench_train(tiny_params(), methods=["magic"])


@pytest.mark.integration
def test_bench_methods_trains_and_attacks_each_method(pipeline_run):
    from medrobust.bench_methods import bench_methods, to_markdown

    report = bench_methods(tiny_params(), methods=["standard", "pgd_at"], dataset_dir=pipeline_run.dataset, epochs=1)
    assert [r["method"] for r in report["rows"]] == ["standard", "pgd_at"]
    for r in report["rows"]:
        assert 0.0 <= r["pgd_accuracy"] <= r["clean_accuracy"] and r["fgsm_accuracy"] <= r["clean_accuracy"]
        assert r["model"]["backbone"] == "small_cnn" and r["train_seconds"] > 0
    md = to_markdown(report, "medrobust bench methods")
    assert "| pgd_at |" in md and "PGD-20" in md


def test_bench_ingest_times_both_paths_on_the_same_files():
    from dataclasses import replace

    from medrobust.bench_ingest import bench_ingest, to_markdown
    from medrobust.stages import ingest

    params = tiny_params()
    params = replace(params, data=replace(params.data, workers=2))
    old = ingest.POOL_MIN_ITEMS
    ingest.POOL_MIN_ITEMS = 16  # exercise the worker pool on a small run
    try:
        report = bench_ingest(params, n_files=60, repeats=1, stage=True)
    finally:
        ingest.POOL_MIN_ITEMS = old
    assert report["n_files"] == 60 and report["ingested"] == 60 and report["workers"] == 2
    for key in ("bare_pydicom_files_per_s", "medrobust_files_per_s", "medrobust_one_process_files_per_s",
                "stage_files_per_s"):
        assert report[key] > 0, key
    assert report["ratio"] == pytest.approx(report["medrobust_files_per_s"] / report["bare_pydicom_files_per_s"])
    md = to_markdown(report, "medrobust bench ingest --n-files 60")
    assert f"**{report['ratio']:.2f}**" in md and "2 decode workers" in md
