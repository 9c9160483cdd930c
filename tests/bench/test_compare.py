"""``medrobust compare``: patient-grouped folds, the tests between methods, and a real run on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, wilcoxon

from medrobust.bench.compare import make_folds, paired_tests, pooled_dataset
from medrobust.config import ConfigError
from tests.conftest import tiny_raw, write_params

BIN = Path(sys.executable).parent


def test_folds_are_patient_disjoint_and_test_every_image_once():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"pat-{i:03d}" for i in range(30)], rng.integers(1, 5, 30))
    folds = make_folds(groups, 5, 0.25, seed=3)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(groups)))
    for f in folds:
        parts = [set(groups[i]) for i in (f.train, f.val, f.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == len(groups) and len(f.val) > 0
    assert make_folds(groups, 5, 0.25, seed=3)[2].val.tolist() == folds[2].val.tolist()  # seeded
    with pytest.raises(ConfigError, match="patients"):
        make_folds(groups[:4], 5, 0.25, seed=0)


def test_paired_tests_match_scipy_and_handle_ties():
    a, b = [0.80, 0.75, 0.90, 0.70, 0.85], [0.70, 0.72, 0.81, 0.69, 0.80]
    t = paired_tests(a, b)
    assert t["wilcoxon_p"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert t["wilcoxon_p"] == pytest.approx(0.0625)  # better in all 5 folds: the smallest p 5 folds allow
    assert t["mannwhitney_p"] == pytest.approx(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    assert t["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    same = paired_tests(a, a)
    assert same["wilcoxon_p"] == 1.0 and same["mean_difference"] == 0.0
    assert paired_tests([None, 0.5], [0.4, 0.6])["folds"] == 1  # a fold without a figure (one class) is left out


def test_compare_cli_cross_validates_methods_on_the_same_folds(pipeline_run, tmp_path):
    raw = tiny_raw()
    write_params(tmp_path / "params.yaml", raw)
    res = subprocess.run(
        [str(BIN / "medrobust"), "compare", "--methods", "standard,fast_at", "--folds", "3", "--epochs", "1",
         "--dataset", str(pipeline_run.dataset), "--out", "out/compare"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out/compare.json").read_text())
    pooled = pooled_dataset(pipeline_run.dataset)
    assert report["n_images"] == len(pooled) and report["folds"] == 3
    for method in ("standard", "fast_at"):
        rows = report["scores"][method]
        assert [r["fold"] for r in rows] == [0, 1, 2]
        assert sum(r["n_test"] for r in rows) == len(pooled)
        assert all(0 <= r["robust_accuracy"] <= r["clean_accuracy"] + 1e-9 <= 1 + 1e-9 for r in rows)
        s = report["summary"][method]
        assert s["clean_accuracy"]["mean"] == pytest.approx(np.mean([r["clean_accuracy"] for r in rows]))
        assert s["clean_accuracy"]["sd"] == pytest.approx(np.std([r["clean_accuracy"] for r in rows], ddof=1))
        assert s["pooled_clean_accuracy"]["n"] == len(pooled)
        assert s["pooled_clean_accuracy"]["value"] == pytest.approx(sum(r["clean_correct"] for r in rows) / len(pooled))
    # the same folds for both methods: the test parts have the same sizes
    assert [r["n_test"] for r in report["scores"]["standard"]] == [r["n_test"] for r in report["scores"]["fast_at"]]
    pair = report["pairs"]["standard vs fast_at"]["clean_accuracy"]
    a = [r["clean_accuracy"] for r in report["scores"]["standard"]]
    b = [r["clean_accuracy"] for r in report["scores"]["fast_at"]]
    assert pair["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    md = (tmp_path / "out/compare.md").read_text()
    assert report["command"] == "medrobust compare --methods standard,fast_at --folds 3 --epochs 1 --out out/compare"
    assert f"Command: `{report['command']}`" in md and "wall time" in md and "Wilcoxon" in md and "Mann–Whitney" in md
    assert "![fold scores per method](compare.png)" in md
    assert (tmp_path / "out/compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_one_method_and_unknown_ones(tmp_path):
    write_params(tmp_path / "params.yaml", tiny_raw())
    for methods, message in (("pgd_at", "at least 2"), ("pgd_at,magic", "magic")):
        res = subprocess.run([str(BIN / "medrobust"), "compare", "--methods", methods, "--dataset", "nowhere"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
