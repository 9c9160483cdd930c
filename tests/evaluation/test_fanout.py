"""The attack suite fanned out (one attack run per entry, as the Kubeflow ParallelFor runs them) and merged.

The merge must give exactly the ``metrics.json`` of the single-process evaluation, and must refuse
an attack run that belongs to another model.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from medrobust.evaluation import fanout
from tests.conftest import tracking_store


def _attack_runs(run, tmp_path):
    from medrobust.stages import evaluate

    return [evaluate.run_attack(run.params, run.dataset, run.model, a.key, tmp_path / f"attack-{a.key}")
            for a in run.params.evaluate.attacks]


@pytest.fixture(scope="module")
def attack_runs(pipeline_run, tmp_path_factory):
    return _attack_runs(pipeline_run, tmp_path_factory.mktemp("fanout"))


def test_merged_attack_runs_give_the_single_process_metrics_exactly(pipeline_run, attack_runs, tmp_path):
    from medrobust.stages import evaluate

    shutil.copy(pipeline_run.root / "mlflow.db", tmp_path / "mlflow.db")
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        merged = evaluate.run(pipeline_run.params, pipeline_run.dataset, pipeline_run.model, pipeline_run.advgen,
                              tmp_path / "evaluation", attack_runs=attack_runs)
    single = json.loads((pipeline_run.evaluation / "metrics.json").read_text())
    assert json.loads((tmp_path / "evaluation" / "metrics.json").read_text()) == single
    assert merged.gates.to_dict() == json.loads((pipeline_run.evaluation / "gates.json").read_text())
    # every ε of every attack came from a run: the attack seconds in timing.json are the runs' own
    timing = json.loads((tmp_path / "evaluation" / "timing.json").read_text())["seconds"]
    for d in attack_runs:
        meta = json.loads((d / fanout.RUN_FILE).read_text())
        assert {f"{meta['key']}@{label}": timing[f"{meta['key']}@{label}"] for label in meta["eps"]} == {
            f"{meta['key']}@{label}": s for label, s in meta["seconds"].items()}


def test_an_attack_run_of_another_model_stops_the_merge(pipeline_run, attack_runs, tmp_path):
    from medrobust.utils import sha256_file

    forged = tmp_path / "forged"
    shutil.copytree(attack_runs[0], forged)
    meta = json.loads((forged / fanout.RUN_FILE).read_text())
    meta["model_sha256"] = "0" * 64
    (forged / fanout.RUN_FILE).write_text(json.dumps(meta))
    with pytest.raises(fanout.AttackRunMismatch, match="another model"):
        fanout.load([forged], pipeline_run.params.evaluate.attacks, seed=pipeline_run.params.seed,
                    early_stop=pipeline_run.params.evaluate.early_stop,
                    model_sha256=sha256_file(pipeline_run.model / "model.pt"),
                    dataset_sha256=sha256_file(pipeline_run.dataset / "manifest.csv"))
    with pytest.raises(fanout.AttackRunMismatch, match="not an attack run"):
        fanout.load([tmp_path], pipeline_run.params.evaluate.attacks, seed=0, early_stop=True, model_sha256="",
                    dataset_sha256="")


def test_a_run_of_other_attack_settings_is_set_aside_and_attacked_again(pipeline_run, attack_runs, caplog):
    """params_yaml overridden at run time (other steps for PGD): PGD's stale run is not used."""
    from medrobust.utils import sha256_file

    suite = [a.model_copy(update={"steps": 7}) if a.name == "pgd" else a for a in pipeline_run.params.evaluate.attacks]
    p = pipeline_run.params
    with caplog.at_level(logging.WARNING, logger="medrobust.evaluation.fanout"):
        got = fanout.load(attack_runs, suite, seed=p.seed, early_stop=p.evaluate.early_stop,
                          model_sha256=sha256_file(pipeline_run.model / "model.pt"),
                          dataset_sha256=sha256_file(pipeline_run.dataset / "manifest.csv"))
    assert {k for k, _ in got} == {a.key for a in suite} - {"pgd_linf"}
    assert "pgd_linf" in caplog.text and "does not match" in caplog.text
    # another seed: nothing matches
    assert fanout.load(attack_runs, suite, seed=p.seed + 1, early_stop=p.evaluate.early_stop,
                       model_sha256=sha256_file(pipeline_run.model / "model.pt"),
                       dataset_sha256=sha256_file(pipeline_run.dataset / "manifest.csv")) == {}


def test_an_unknown_attack_key_is_refused(pipeline_run, tmp_path):
    from medrobust.stages import evaluate

    with pytest.raises(KeyError, match="not in evaluate.attacks"):
        evaluate.run_attack(pipeline_run.params, pipeline_run.dataset, pipeline_run.model, "cw_l2", tmp_path / "x")


def test_each_attack_is_listed_once():
    from medrobust.config import ConfigError
    from tests.conftest import tiny_params

    twice = [{"name": "pgd", "eps": ["4/255"]}, {"name": "pgd", "eps": ["8/255"]}]
    with pytest.raises(ConfigError, match="pgd_linf appear"):
        tiny_params(evaluate={"attacks": twice}, register={"gate_attack": "pgd_linf", "gate_eps": "8/255"})
