"""`medrobust bench autoattack` runs end to end on a slice of scikit-learn's digits (the speed-up
itself is the benchmark's business, not a unit test's: `benchmarks/autoattack.md`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medrobust.bench.autoattack import digits
from medrobust.cli import app


def test_digits_are_a_seeded_split_in_the_unit_range():
    x_train, y_train, x, y = digits(500, seed=0)
    assert x.shape == (500, 1, 8, 8) and len(x_train) == 1797 - 500
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and set(y.tolist()) == set(range(10))
    assert digits(500, seed=0)[3].tolist() == y.tolist() and digits(500, seed=1)[3].tolist() != y.tolist()
    with pytest.raises(ValueError, match="n_images must be in 1..1697"):
        digits(1750, seed=0)


@pytest.mark.integration
def test_bench_autoattack_compares_both_ensembles_and_writes_its_table(tmp_path):
    pytest.importorskip("torchattacks")
    out = tmp_path / "aa"
    result = CliRunner().invoke(app, ["bench", "autoattack", "--n-images", "40", "--eps", "0.1", "--repeats", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    (row,) = report["rows"]
    assert row["eps"] == 0.1 and row["seconds_ours"] > 0 and row["seconds_torchattacks"] > 0
    assert row["speedup"] == pytest.approx(row["seconds_torchattacks"] / row["seconds_ours"])
    for side in ("robust_ours", "robust_torchattacks"):
        est = row[side]
        assert est["n"] == 40 and est["ci_low"] <= est["value"] <= est["ci_high"]
    assert report["clean_accuracy"]["value"] > 0.8
    # at least as strong: every point torchattacks fools, ours fools too
    assert row["fooled_only_by_torchattacks"] == 0 and row["robust_ours"]["value"] <= row["robust_torchattacks"]["value"]
    assert [m["attack"] for m in row["members"]] == ["apgd_ce", "apgd_dlr", "square"][:len(row["members"])]
    md = out.with_suffix(".md").read_text()
    assert "`medrobust bench autoattack --n-images 40 --eps 0.1 --repeats 1 --out" in md and "speedup" in md
