"""Data-parallel training: 2 gloo ranks under torchrun against 1 process with the same global batch.

What must agree (the train stage run for real both ways, on the session's tiny ingested data):
- the per-epoch training metrics and validation accuracy, within the stated tolerance;
- the weights, within the stated tolerance. The only differences are floating-point rounding (the
  order of the sums over ranks, batch statistics from all-reduced sums instead of one pass), which
  Adam's normalised steps carry forward: measured 3e-5 after 9 steps of ``standard``; under
  ``pgd_at`` a rounding-level change can flip the sign of a near-zero input gradient and so one PGD
  pixel step, and the largest weight difference after 3 epochs was 1.2e-3 (loss 5.7e-4);
- the final metrics: clean and PGD accuracy on the test split, exactly (the same predictions).

The global batch is 15, so every step splits unevenly (8 + 7) and the last batch is short: the
weighting by shard size is exercised. Batch statistics are global (``train.ddp.sync_bn``, CPU
``GlobalBatchNorm2d``); PGD's random start is off because each rank draws its own starts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_raw, tracking_store

#: method -> (per-epoch metric tolerance, weight tolerance): about 4x what was measured
TOLERANCES = {"standard": (1e-5, 1.5e-4), "pgd_at": (2.5e-3, 5e-3)}


def _params(method: str = "pgd_at", **train):
    from medrobust.params import parse_params

    base = {"method": method, "epochs": 3, "batch_size": 15, "clean_warmup_epochs": 1 if method != "standard" else 0,
            "hflip": True, "methods": {"pgd_at": {"steps": 2, "warmup_epochs": 0, "random_start": False}}}
    return parse_params(tiny_raw(device="cpu", train={**base, **train}))


@pytest.mark.integration
@pytest.mark.parametrize("method", list(TOLERANCES))
def test_two_gloo_ranks_train_what_one_process_trains_on_the_same_global_batch(method, pipeline_run, tmp_path):
    import mlflow

    from medrobust.attacks import PGD
    from medrobust.data.shards import load_split
    from medrobust.models import load_model
    from medrobust.models.inference import predict_logits
    from medrobust.stages import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_store(uri):
        one = train.run(_params(method), pipeline_run.dataset, tmp_path / "one")
        two = train.run(_params(method, distributed=True, ddp={"nproc_per_node": 2, "sync_bn": True}),
                        pipeline_run.dataset, tmp_path / "two")
    tol, weight_tol = TOLERANCES[method]
    h1, h2 = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert len(h1) == len(h2) == 3 and set(h1[0]) == set(h2[0])
    for e1, e2 in zip(h1, h2):
        for key in e1:
            assert abs(e1[key] - e2[key]) <= tol, (key, e1[key], e2[key])
    assert json.loads((tmp_path / "one" / "selection.json").read_text()) == json.loads(
        (tmp_path / "two" / "selection.json").read_text())
    m1, _ = load_model(tmp_path / "one")
    m2, _ = load_model(tmp_path / "two")
    s1, s2 = m1.state_dict(), m2.state_dict()
    worst = max(float((s1[k].double() - s2[k].double()).abs().max()) for k in s1)
    assert worst <= weight_tol, worst
    test = load_split(pipeline_run.dataset, "test")
    for m in (m1, m2):
        m.eval()
    assert torch.equal(predict_logits(m1, test.x).argmax(1), predict_logits(m2, test.x).argmax(1))
    adv = [PGD(m, eps=8 / 255, steps=5, random_start=False)(test.x, test.y) for m in (m1, m2)]
    robust = [(predict_logits(m, a).argmax(1) == test.y).float().mean().item() for m, a in zip((m1, m2), adv)]
    assert robust[0] == robust[1]
    # rank 0 alone logged: one MLflow run per training, the model logged once, outputs written once
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("medrobust")
                                                 .experiment_id])
    assert len(runs) == 2 and {one.run_id, two.run_id} == {r.info.run_id for r in runs}
    assert runs[0].data.params["train.distributed"] in ("True", "False")
    assert np.isfinite(two.final_val_accuracy) and two.final_val_accuracy == one.final_val_accuracy
    assert not list(tmp_path.glob(".two.*")) and (tmp_path / "two" / "model.pt").exists()  # no .tmp- or .old- left


def test_shards_cover_a_global_batch_once_in_order():
    from medrobust.training.distributed import World, shard

    idx = torch.arange(15)
    parts = [shard(idx, World(r, 2)) for r in range(2)]
    assert [len(p) for p in parts] == [8, 7] and torch.equal(torch.cat(parts), idx)
    assert torch.equal(shard(idx, World()), idx)


def test_a_distributed_run_with_one_process_is_the_plain_run(pipeline_run, tmp_path):
    """nproc 1 (no second GPU): train.distributed changes nothing, bit for bit."""
    from medrobust.stages import train
    from medrobust.utils import sha256_file

    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        train.run(_params(epochs=1), pipeline_run.dataset, tmp_path / "plain")
        train.run(_params(epochs=1, distributed=True, ddp={"nproc_per_node": 1}), pipeline_run.dataset, tmp_path / "d1")
    assert sha256_file(tmp_path / "plain" / "model.pt") == sha256_file(tmp_path / "d1" / "model.pt")
