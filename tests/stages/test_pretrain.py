"""``medrobust pretrain`` end to end on the tiny pipeline's ingested data, against a real sqlite MLflow store.

Two noise ratios, two heads, one epoch each: the outputs, the exact count of noisy pairs, every
accuracy with its interval and image count, the weights loading as ``clip_vit_tiny``, the MLflow run,
and the CLI from another folder. The numbers themselves are measured by ``medrobust pretrain`` at the
default settings (README).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_raw, tracking_store

pytest.importorskip("open_clip")

SMALL = {"pretrain": {"noise_ratios": [0.0, 0.2], "epochs": 2, "batch_size": 16, "image_steps": 2,
                      "downstream": {"heads": ["linear_probe", "nmtune"], "epochs": 1, "attack_steps": 2}}}


def test_pretrain_stage_writes_weights_results_and_an_mlflow_run(pipeline_run, tmp_path):
    import mlflow

    from medrobust.data.shards import load_split
    from medrobust.models import ModelSpec, build_model
    from medrobust.params import parse_params
    from medrobust.stages import pretrain

    params = parse_params(tiny_raw(**SMALL))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "pretrain"
    with tracking_store(uri):
        result = pretrain.run(params, pipeline_run.dataset, out)
    n_train = len(load_split(pipeline_run.dataset, "train"))
    n_test = len(load_split(pipeline_run.dataset, "test"))
    assert sorted(p.name for p in out.iterdir()) == ["clip_r00.pt", "clip_r20.pt", "pretrain.json", "pretrain.md",
                                                     "pretrain.png", "run.json"]
    report = json.loads((out / "pretrain.json").read_text())
    assert [e["ratio"] for e in report["ratios"]] == [0.0, 0.2] and report["n_test"] == n_test
    clean, noisy = report["ratios"]
    assert clean["pairs"]["noisy"] == 0 and clean["examples"] == []
    assert noisy["pairs"] == {"pairs": n_train, "noisy": round(0.2 * n_train), "noisy_images": round(0.2 * n_train),
                              "noisy_captions": round(0.2 * n_train)}
    assert noisy["examples"] and all(e["caption"] != e["perturbed"] for e in noisy["examples"])
    for entry in report["ratios"]:
        assert len(entry["loss"]) == 2 and entry["val_contrastive_loss"] > 0
        assert set(entry["heads"]) == {"linear_probe", "nmtune"}
        for head in entry["heads"].values():
            assert set(head) == set(pretrain.CONDITIONS)
            for est in head.values():
                assert est["n"] == n_test and est["ci"][0] <= est["value"] <= est["ci"][1]
    assert "| 20% | " in (out / "pretrain.md").read_text()
    # the pre-trained tower loads into a classifier (weights_only) and differs between the ratios
    state = torch.load(out / "clip_r20.pt", weights_only=True)
    build_model(ModelSpec("clip_vit_tiny", 2, mean=0.0, std=1.0), pretrained=out / "clip_r20.pt")
    assert not torch.equal(state["visual.conv1.weight"], torch.load(out / "clip_r00.pt", weights_only=True)[
        "visual.conv1.weight"])
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medrobust.stage"] == "pretrain"
    assert run.data.params["pretrain.noise_ratios"] == "[0.0, 0.2]"
    steps = [m.step for m in client.get_metric_history(result.run_id, "nmtune_ood_pgd")]
    assert steps == [0, 20]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"pretrain.json", "pretrain.png", "pretrain.md"} <= artifacts


def test_pretrain_cli_from_another_folder_and_bad_params(pipeline_run, tmp_path, monkeypatch):
    from medrobust.cli import app

    raw = tiny_raw(**{"pretrain": {**SMALL["pretrain"], "noise_ratios": [0.1],
                                   "downstream": {**SMALL["pretrain"]["downstream"], "heads": ["ran"]}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        res = CliRunner().invoke(app, ["pretrain", "--dataset", str(pipeline_run.dataset), "--out", "pre"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    assert [e["ratio"] for e in report["ratios"]] == [0.1]  # the clean surrogate is trained but not reported
    assert sorted(p.name for p in (tmp_path / "pre").glob("*.pt")) == ["clip_r00.pt", "clip_r10.pt"]
    from medrobust.config import ConfigError
    from medrobust.params import parse_params

    for bad, match in (({"noise_ratios": [0.1, 0.104]}, "differ by at least 1 %"),
                       ({"noise_ratios": [1.5]}, "must be in \\[0, 1\\]"),
                       ({"downstream": {"shift": "fog"}}, "pretrain.downstream.shift")):
        with pytest.raises(ConfigError, match=match):
            parse_params(tiny_raw(pretrain=bad))
