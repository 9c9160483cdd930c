"""``kill -9`` in the middle of training, then the next start: it resumes and ends bit-identical (issue 14).

A real process (the train stage) is killed with SIGKILL inside its third epoch; a second run of the same
stage resumes from the state saved after epoch 2 and must write the same ``model.pt`` bytes, the same
history and the same checkpoints as an uninterrupted run, and leave no temporary folder behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import yaml

from tests.conftest import REPO, tiny_raw, tracking_store

EPOCHS = 4

# the train stage, made to stop inside epoch 3 (the first two are saved) so the kill lands mid-epoch
_CHILD = r"""
import sys, time, yaml
import medrobust.defenses.pgd_at as pgd_at
from medrobust.params import parse_params
from medrobust.stages import train

real = pgd_at.PGDAT.loss
def loss(self, model, x, y):
    if self.epoch == 2:  # the method's third epoch (no clean warm-up here)
        print("IN_EPOCH_3", flush=True)
        time.sleep(120)
    return real(self, model, x, y)
pgd_at.PGDAT.loss = loss
train.run(parse_params(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], sys.argv[3])
"""


def test_train_killed_mid_epoch_resumes_and_ends_bit_identical(pipeline_run, tmp_path, caplog):
    import logging

    from medrobust.params import parse_params
    from medrobust.stages import train
    from medrobust.utils import sha256_file

    raw = tiny_raw(device="cpu", train={"epochs": EPOCHS, "clean_warmup_epochs": 0,
                                        "methods": {"pgd_at": {"steps": 2, "warmup_epochs": 1}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "params.yaml"), str(pipeline_run.dataset),
                             str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "IN_EPOCH_3"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resume = tmp_path / ".killed.resume"
    assert (resume / "state.pt").exists() and not out.exists()
    assert sorted(p.name for p in (resume / "checkpoints").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]

    params = parse_params(raw)
    with tracking_store(uri), caplog.at_level(logging.INFO, logger="medrobust.training.loop"):
        resumed = train.run(params, pipeline_run.dataset, out)
        train.run(params, pipeline_run.dataset, tmp_path / "whole")
    assert "resuming from epoch 2 of 4" in caplog.text
    assert sha256_file(out / "model.pt") == sha256_file(tmp_path / "whole" / "model.pt")  # bit-identical
    assert json.loads((out / "history.json").read_text()) == json.loads((tmp_path / "whole" / "history.json").read_text())
    for name in (f"epoch_{e:03d}.pt" for e in range(1, EPOCHS + 1)):
        assert sha256_file(out / "checkpoints" / name) == sha256_file(tmp_path / "whole" / "checkpoints" / name), name
    # no litter: no temporary output, no resume state once the outputs are in place
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # the killed process's MLflow run is FAILED; the resumed run holds every epoch's metrics
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("medrobust").experiment_id])}
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED", "FINISHED"]
    assert len(client.get_metric_history(resumed.run_id, "train_loss")) == EPOCHS
