"""`medrobust bench methods`: every method trains at the same budget, per seed, and is attacked in both threat models."""

from __future__ import annotations

import pytest

from medrobust.bench.methods import bench_methods, summarise
from medrobust.bench.methods_report import to_markdown
from tests.conftest import tiny_params


@pytest.mark.integration
def test_bench_methods_trains_and_attacks_each_method_per_seed(pipeline_run):
    params = tiny_params(evaluate={"masking": {"n_points": 8, "square_queries": 10}})
    report = bench_methods(params, methods=["standard", "dpaat"], dataset_dir=pipeline_run.dataset, epochs=1,
                           pgd_steps=3, seeds=2)
    assert [(r["method"], r["seed"]) for r in report["rows"]] == [("standard", 7), ("dpaat", 7), ("standard", 8),
                                                                   ("dpaat", 8)]
    for r in report["rows"]:
        shared = r["suites"]["shared_linf"]
        assert set(shared["attacks"]) == {"fgsm_linf", "pgd_linf", "autoattack_linf"}
        # the worst case is never above any single attack, nor above clean
        assert shared["worst_case"] <= min(shared["attacks"].values()) <= r["clean_correct"] <= r["n"]
        assert {c["name"] for c in r["masking"]} >= {"deterministic_outputs", "large_eps_breaks_model"}
    dpaat = [r for r in report["rows"] if r["method"] == "dpaat"]
    # DPAAT trains against an L2 budget: it is also attacked there, at the ε it trained with
    assert all(set(r["suites"]["own_l2"]["attacks"]) == {"pgdl2_l2", "autoattack_l2"} for r in dpaat)
    assert dpaat[0]["suites"]["own_l2"]["eps"] == pytest.approx(params.train.methods["dpaat"]["eps"])
    assert "own_l2" not in next(r for r in report["rows"] if r["method"] == "standard")["suites"]
    s = report["summary"]["methods"]["standard"]
    per_seed = [r["clean_correct"] / r["n"] for r in report["rows"] if r["method"] == "standard"]
    assert s["clean"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert s["clean"]["ci"][0] <= s["clean"]["mean"] <= s["clean"]["ci"][1]
    md = to_markdown(report, "medrobust bench methods --seeds 2")
    ranked = report["summary"]["ranking"]
    for m in ("standard", "dpaat"):
        assert (f"| {ranked.index(m) + 1} | {m} |" if m in ranked else f"| not ranked | {m} |") in md
    assert "AutoAttack" in md and "own threat model" in md.lower()


def test_a_method_failing_a_masking_check_is_marked_not_ranked():
    def row(method, seed, clean, worst, passed):
        return {"method": method, "seed": seed, "n": 10, "clean_correct": clean, "train_seconds": 1.0, "note": "",
                "train_norm": "linf", "masking": [{"name": "nonzero_input_gradients", "passed": passed}],
                "suites": {"shared_linf": {"eps": 8 / 255, "attacks": {"pgd_linf": worst}, "worst_case": worst}}}

    rows = [row("a", 0, 9, 5, True), row("a", 1, 9, 6, True), row("b", 0, 9, 9, True), row("b", 1, 9, 9, False),
            row("c", 0, 9, 7, True), row("c", 1, 9, 7, True)]
    summary = summarise(rows, ["a", "b", "c"])
    assert summary["ranking"] == ["c", "a"]  # b has the best number and is not ranked
    assert summary["not_ranked"] == {"b": ["nonzero_input_gradients"]}
    assert summary["methods"]["a"]["linf_worst_case"]["mean"] == pytest.approx(0.55)
