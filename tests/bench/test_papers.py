"""``medrobust bench papers``: the difference interval, the verdicts, RAN's claims, and the committed claims files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medrobust.bench.papers import (PAPERS, VERDICTS, bench_papers, check_papers, difference, ran_claims,
                                    to_markdown, verdict_of)
from medrobust.evaluation.stats import proportion
from tests.conftest import REPO, tiny_raw, tracking_store


@pytest.mark.parametrize("k1,k2,n", [(90, 85, 96), (50, 50, 96), (10, 30, 40), (96, 80, 96), (0, 3, 20)])
def test_difference_is_newcombes_interval(k1, k2, n):
    from statsmodels.stats.proportion import confint_proportions_2indep

    diff = difference(proportion(k1, n), proportion(k2, n))
    low, high = confint_proportions_2indep(k1, n, k2, n, method="newcomb", compare="diff")
    assert diff["value"] == pytest.approx((k1 - k2) / n)
    assert diff["ci"] == [pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9)] and diff["n"] == n


def test_verdicts_follow_the_interval():
    assert verdict_of(difference(proportion(95, 100), proportion(70, 100)))[0] == "reproduced"
    verdict, reason = verdict_of(difference(proportion(80, 96), proportion(76, 96)))
    assert verdict == "not reproduced" and "includes 0 (the difference points the claimed way)" in reason
    verdict, reason = verdict_of(difference(proportion(70, 96), proportion(76, 96)))
    assert verdict == "not reproduced" and "points the other way" in reason
    assert verdict_of(difference(proportion(60, 100), proportion(90, 100)), "lower")[0] == "reproduced"


def _entry(ratio: float, acc: dict[str, int], n: int = 100) -> dict:
    conds = ("id_clean", "id_pgd", "ood_clean", "ood_pgd")
    return {"ratio": ratio, "heads": {h: {c: proportion(k if c != "ood_clean" else k - 20, n) for c in conds}
                                      for h, k in acc.items()}}


def test_ran_claims_on_a_made_up_sweep():
    report = {"ratios": [_entry(0.0, {"linear_probe": 70, "ran": 72}), _entry(0.1, {"linear_probe": 71, "ran": 95}),
                         _entry(0.3, {"linear_probe": 40, "ran": 70})]}
    claims = {c["id"]: c for c in ran_claims(report)}
    assert claims["moderate_noise_helps_id_robustness/ran"]["verdict"] == "reproduced"  # 95 vs 72
    assert claims["moderate_noise_helps_id_robustness/linear_probe"]["verdict"] == "not reproduced"  # 71 vs 70
    assert claims["high_noise_degrades/linear_probe/id_clean"]["verdict"] == "reproduced"  # 40 vs 70
    assert claims["high_noise_degrades/ran/ood_clean"]["verdict"] == "not reproduced"  # 50 vs 52
    assert claims["ran_beats_baselines/r10"]["verdict"] == "reproduced"
    assert claims["ran_beats_baselines/r00"]["verdict"] == "not reproduced"
    assert claims["ran_beats_baselines/r10"]["measured"]["best_baseline"] == "linear_probe"
    with pytest.raises(ValueError, match="must include 0"):
        ran_claims({"ratios": report["ratios"][1:]})
    no_ran = ran_claims({"ratios": [_entry(r, {"linear_probe": 70}) for r in (0.0, 0.1, 0.3)]})
    assert no_ran[-1]["verdict"] == "not testable here" and no_ran[-1]["reason"]


def test_check_papers_names_unknown_and_unbuilt_sections():
    assert check_papers(None) == ["dpaat", "ran"]
    with pytest.raises(ValueError, match="unknown paper 'ranx'.*domain_assimilation, dpaat, ran, rtda, arfl"):
        check_papers(["ranx"])
    with pytest.raises(ValueError, match="the rtda section is not built yet; built: dpaat, ran"):
        check_papers(["rtda"])


def test_committed_claims_have_a_verdict_numbers_and_a_reason():
    claims_dir = REPO / "benchmarks" / "claims"
    files = sorted(claims_dir.glob("*.json"))
    assert [f.stem for f in files] == ["dpaat", "ran"]
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["paper"] in PAPERS and doc["command"].startswith("medrobust bench papers") and doc["wall_s"] > 0
        assert len(doc["claims"]) >= 3
        for c in doc["claims"]:
            assert c["verdict"] in VERDICTS and c["reason"] and c["claim"] and c["source"], c["id"]
            if c["verdict"] != "not testable here":
                diff = c["measured"]["difference"]
                assert diff["n"] > 0 and diff["ci"][0] <= diff["value"] <= diff["ci"][1], c["id"]
                assert (c["verdict"] == "reproduced") == (diff["ci"][0] > 0 or diff["ci"][1] < 0), c["id"]
    assert (REPO / "benchmarks" / "papers.md").read_text() == to_markdown(claims_dir)


def test_bench_papers_ran_section_end_to_end(pipeline_run, tmp_path, monkeypatch):
    import yaml

    from medrobust.cli import app

    raw = tiny_raw(pretrain={"noise_ratios": [0.0, 0.1, 0.2], "epochs": 1, "batch_size": 16, "image_steps": 1,
                             "downstream": {"heads": ["linear_probe", "ran"], "epochs": 1, "attack_steps": 1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        res = runner.invoke(app, ["bench", "papers", "--paper", "ran", "--dataset", str(pipeline_run.dataset),
                                  "--out", "bench"])
        assert res.exit_code == 0, res.output
        bad = runner.invoke(app, ["bench", "papers", "--paper", "rtda", "--dataset", str(pipeline_run.dataset)])
    assert bad.exit_code == 2 and "not built yet" in bad.output
    doc = json.loads(Path("bench/claims/ran.json").read_text())
    assert doc["command"] == "medrobust bench papers --paper ran --out bench"
    assert [round(100 * e["ratio"]) for e in doc["results"]] == [0, 10, 20]
    assert {c["id"] for c in doc["claims"]} >= {"ran_beats_baselines/r00", "ran_beats_baselines/r20",
                                                "high_noise_degrades/ran/ood_clean"}
    md = Path("bench/papers.md").read_text()
    assert "## ran" in md and "## rtda\n\nNot built yet" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "mlartifacts", "mlflow.db", "params.yaml"]  # no work files


def test_dpaat_claims_follow_the_rows():
    from medrobust.bench.papers_dpaat import dpaat_claims, mean_interval

    rows = {"dpaat": {"clean": proportion(90, 100), "pgd20_l2": proportion(80, 100), "ifgsm_l2": proportion(62, 100),
                      "cam_agreement": [0.9, 0.8, 0.85, 0.95, 0.9]},
            "pgd_at": {"clean": proportion(92, 100), "pgd20_l2": proportion(50, 100), "ifgsm_l2": proportion(60, 100),
                       "cam_agreement": [0.7, 0.6, 0.65, 0.75, 0.72]}}
    claims = {c["id"]: c for c in dpaat_claims(rows)}
    assert claims["dpaat_beats_pgd_at/pgd20_l2"]["verdict"] == "reproduced"
    assert claims["dpaat_beats_pgd_at/ifgsm_l2"]["verdict"] == "not reproduced"
    assert claims["dpaat_generalization_comparable"]["verdict"] == "not reproduced"  # 90 vs 92: lower bound < -5
    assert claims["dpaat_gradcam_alignment"]["verdict"] == "reproduced"
    assert claims["dpaat_gradcam_alignment"]["measured"]["difference"]["value"] == pytest.approx(0.196)
    big = {m: {**r, "clean": proportion(k, 4000)} for (m, r), k in zip(rows.items(), (3600, 3610))}
    assert {c["id"]: c for c in dpaat_claims(big)}["dpaat_generalization_comparable"]["verdict"] == "reproduced"
    # the t interval against scipy's
    from scipy import stats

    import numpy as np

    v = np.array([0.1, 0.3, -0.2, 0.4, 0.25, float("nan")])
    est = mean_interval(v)
    lo, hi = stats.t.interval(0.95, 4, loc=v[:5].mean(), scale=stats.sem(v[:5]))
    assert est["n"] == 5 and est["ci"] == [pytest.approx(lo), pytest.approx(hi)]


def test_bench_papers_dpaat_section_end_to_end(pipeline_run, tmp_path):
    from medrobust.params import parse_params

    params = parse_params(tiny_raw(train={"epochs": 2, "clean_warmup_epochs": 1}))
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        sections = bench_papers(params, ["dpaat"], dataset_dir=pipeline_run.dataset, out_dir=tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "claims" / "dpaat.json").read_text())
    assert doc["protocol"]["eps"] == 0.3 and doc["protocol"]["optim"] == {"name": "adam", "lr": 3e-4}
    assert [r["method"] for r in doc["results"]] == ["standard", "pgd_at", "dpaat"]
    for r in doc["results"]:
        for key in ("clean", "pgd20_l2", "ifgsm_l2"):
            assert r[key]["n"] == doc["protocol"]["n_test"] and r[key]["ci"][0] <= r[key]["value"] <= r[key]["ci"][1]
        assert -1 <= r["cam_agreement"]["value"] <= 1 and 1 <= r["selected_epoch"] <= 2
    assert {c["id"] for c in doc["claims"]} == {"dpaat_beats_pgd_at/pgd20_l2", "dpaat_beats_pgd_at/ifgsm_l2",
                                                "dpaat_generalization_comparable", "dpaat_gradcam_alignment"}
    assert all(c["verdict"] in VERDICTS and c["reason"] for c in doc["claims"])
    assert sections["dpaat"]["wall_s"] > 0
