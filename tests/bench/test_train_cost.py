"""`medrobust bench train`: every variant is timed against standard training in the same run."""

from __future__ import annotations

import pytest

from medrobust.bench.train_cost import PGD_STEPS, bench_train, to_markdown
from tests.conftest import tiny_params


def test_bench_train_times_every_variant_against_standard():
    report = bench_train(tiny_params(), methods=["pgd_at", "trades"], n_batches=1, repeats=1)
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"standard", "trades", *(f"pgd_at (k={k})" for k in PGD_STEPS)}
    assert rows["standard"]["ratio"] == 1.0
    assert all(rows[f"pgd_at (k={k})"]["bound"] == pytest.approx(1.05 * (k + 1)) for k in PGD_STEPS)
    assert "bound" not in rows["trades"] and "| trades |" in to_markdown(report, "cmd")
    with pytest.raises(KeyError, match="unknown training method"):
        bench_train(tiny_params(), methods=["magic"])
