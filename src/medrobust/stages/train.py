"""Stage 3 — train: a model with the training method named in ``train.method``.

The method comes from :data:`medrobust.defenses.TRAINING_METHODS`, the backbone from
:data:`medrobust.models.BACKBONES` (built by :func:`medrobust.training.build_method`). One MLflow
run is opened here and re-used by evaluate and register: it holds the params, per-epoch metrics,
the model, and later the robustness results.

Outputs (in ``out_dir``, written atomically):

* ``model.pt`` + ``model.json`` — the kept weights (a state dict) and the model spec: by default the
  epoch with the best robust validation accuracy under a cheap PGD at the gate ε
  (``train.selection``; :mod:`medrobust.training.selection`), said in ``selection.json``;
* ``checkpoints/epoch_NNN.pt`` — model and optimiser state after every epoch;
* beside them, while training runs, ``.<out>.resume/`` (:mod:`medrobust.training.resume`): the full
  state after each epoch. A run killed mid-training resumes there on the next start ("resuming from
  epoch k") and ends with the same ``model.pt`` as an uninterrupted run; it is removed once the
  outputs are in place;
* ``history.json`` + ``training.png`` — per-epoch metrics;
* ``run.json`` — the MLflow run id and the logged model's URI.

With ``train.distributed: true`` and more than one process (``train.ddp.nproc_per_node``; 0: one per
visible GPU), :func:`run` starts ``torchrun --standalone`` on this module; every rank trains on its
shard of each global batch (its own adversarial examples) and only rank 0 validates, logs to MLflow
and writes the outputs (:mod:`medrobust.training.distributed`). ``train.batch_size`` stays the global
batch, so the run takes the same steps as one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.data.shards import load_split
from medrobust.models import save_model
from medrobust.params import Params
from medrobust.registry import evidence, tracking
from medrobust.config import eps_label
from medrobust.training import build_method, plot_history, train_model
from medrobust.training import distributed as ddp
from medrobust.training.selection import clean_score, robust_score
from medrobust.utils import (atomic_output_dir, dvc_md5, read_csv, resolve_device, seed_everything, sha256_file,
                             write_json)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What train wrote: the folder, the MLflow run and logged model, the kept epoch's validation accuracy.

    Attributes:
        out_dir: the stage's output folder.
        run_id: the MLflow run (re-used by evaluate and register).
        model_uri: the logged model's URI.
        final_val_accuracy: validation accuracy of the kept epoch (NaN when not recorded).
    """

    out_dir: Path
    run_id: str
    model_uri: str
    final_val_accuracy: float


def _dataset(dataset_dir: str | Path, digest: str) -> Any:
    """The ingested dataset as an MLflow dataset input: the manifest (pseudonymous ids, no pixels)."""
    import mlflow.data

    manifest = read_csv(Path(dataset_dir) / "manifest.csv")
    cols = [c for c in ("image_id", "patient_id", "split", "label", "source") if c in manifest.columns]
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways" (the same class twice)
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(manifest[cols], source=str(Path(dataset_dir).resolve() / "manifest.csv"),
                                       name="ingested", digest=digest[:36])


def _selection(params: Params, val: Any) -> tuple[Any, str]:
    """The epoch-selection score of ``train.selection`` and its description."""
    sel = params.train.selection
    if sel.metric == "last" or len(val) == 0:
        return None, "the last epoch"
    if sel.metric == "clean":
        return clean_score(val), "best clean validation accuracy"
    g = params.register
    n = min(sel.max_images, len(val))
    return (robust_score(val, g.gate_norm, g.gate_eps, sel.steps, sel.max_images, params.seed),
            f"best robust validation accuracy: PGD-{sel.steps} {g.gate_norm} at ε={eps_label(g.gate_eps)} on {n} images")


def _nproc(params: Params) -> int:
    n = params.train.ddp.nproc_per_node
    return n or max(torch.cuda.device_count() if params.device != "cpu" else 0, 1)


def _launch(params: Params, dataset_dir: Path, out_dir: Path, nproc: int) -> TrainResult:
    """``torchrun --standalone --nproc-per-node N -m medrobust.stages.train``; rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="medrobust-ddp-") as tmp:
        spec = Path(tmp) / "params.json"
        spec.write_text(json.dumps(params.model_dump(mode="json")))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "medrobust.stages.train", str(spec), str(Path(dataset_dir).resolve()), str(Path(out_dir).resolve())]
        log.info("train.distributed: %d processes (torchrun)", nproc)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"distributed training failed (torchrun exit {proc.returncode}); the ranks' logs are "
                               "above; the previous outputs are intact")
    info = json.loads((Path(out_dir) / "run.json").read_text())
    history = json.loads((Path(out_dir) / "history.json").read_text())
    final = history[info["selected_epoch"] - 1].get("val_accuracy", float("nan"))
    return TrainResult(Path(out_dir), info["run_id"], info["model_uri"], final)


def run(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> TrainResult | None:
    """Train, checkpoint every epoch, log to MLflow.

    Args:
        params: validated params (``train``, ``data``, ``seed``, ``device``, ``mlflow``).
        dataset_dir: the ingest stage's output.
        out_dir: the stage's output folder (replaced atomically on success).

    Returns:
        The MLflow run id, the logged model's URI and the final validation accuracy; None on a rank
        other than 0 of a distributed run (rank 0 writes and reports).

    Raises:
        ValueError: the method refuses the model or the data.
        RuntimeError: a distributed run failed.
    """
    if params.train.distributed and not ddp.under_torchrun() and _nproc(params) > 1:
        return _launch(params, Path(dataset_dir), Path(out_dir), _nproc(params))
    world = ddp.world_from_env() if params.train.distributed else ddp.SINGLE
    if not world.distributed:
        return _train(params, dataset_dir, out_dir, world)
    ddp.init(world, params.train.ddp.backend)
    try:
        return _train(params, dataset_dir, out_dir, world)
    finally:
        ddp.shutdown()


def _train(params: Params, dataset_dir: str | Path, out_dir: str | Path, world: ddp.World) -> TrainResult | None:
    import mlflow

    cfg = params.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.clean_warmup_epochs >= cfg.epochs and cfg.method != "standard":
        log.warning("train.epochs (%d) <= train.clean_warmup_epochs (%d): every epoch is clean warm-up, so %s never "
                    "trains with its own loss; raise train.epochs or lower clean_warmup_epochs", cfg.epochs,
                    cfg.clean_warmup_epochs, cfg.method)
    seed_everything(params.seed)
    train, val = load_split(dataset_dir, "train"), load_split(dataset_dir, "val")
    device = resolve_device(params.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    model, method, spec = build_method(cfg, cfg.method, train, len(params.data.classes), params.data.image_size,
                                       seed=params.seed, device=device)
    if world.distributed and cfg.ddp.sync_bn:
        model = ddp.sync_batch_norm(model, device)
    data_md5 = dvc_md5(Path(dataset_dir))
    # the state after every epoch, beside the output (a kill discards the temporary output folder, not this)
    resume_dir = Path(out_dir).parent / f".{Path(out_dir).name}.resume"
    resume_key = hashlib.sha256(json.dumps({"params": params.model_dump(mode="json"), "data": data_md5,
                                            "ranks": world.size}, sort_keys=True).encode()).hexdigest()
    if not world.is_main:  # a worker rank: its share of every step, nothing written or logged
        train_model(model, method, train, None, epochs=cfg.epochs, batch_size=cfg.batch_size, optim=cfg.optim,
                    seed=params.seed, hflip=cfg.hflip, clean_warmup_epochs=cfg.clean_warmup_epochs,
                    desc=f"{cfg.method} rank {world.rank}", world=world, resume_dir=resume_dir, resume_key=resume_key)
        return None
    tracking.configure(params.mlflow)
    with atomic_output_dir(out_dir) as tmp, mlflow.start_run(run_name=f"{cfg.method}-{cfg.model.backbone}") as active:
        tracking.claim_run()
        mlflow.log_params(tracking.flatten(tracking.run_params(params.to_dict())))
        tags = {"medrobust.method": cfg.method, "medrobust.backbone": cfg.model.backbone, "medrobust.stage": "train",
                "medrobust.data_dvc_md5": data_md5}
        commit = tracking.git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags(tags)
        mlflow.log_input(_dataset(dataset_dir, data_md5), context="training")
        select, selected_by = _selection(params, val)
        history = train_model(
            model, method, train, val, epochs=cfg.epochs, batch_size=cfg.batch_size, optim=cfg.optim,
            seed=params.seed, checkpoint_dir=resume_dir / "checkpoints", hflip=cfg.hflip,
            clean_warmup_epochs=cfg.clean_warmup_epochs, on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch),
            desc=cfg.method, select=select, world=world, resume_dir=resume_dir, resume_key=resume_key,
        )
        shutil.copytree(resume_dir / "checkpoints", tmp / "checkpoints")
        log.info("model.pt holds epoch %d of %d (%s)", history.best_epoch, cfg.epochs, selected_by)
        mlflow.set_tags({"medrobust.selected_epoch": str(history.best_epoch), "medrobust.selected_by": selected_by})
        model = ddp.plain_batch_norm(model.cpu())  # saved and logged as a CPU model (plain batch norm)
        save_model(model, spec, tmp)
        write_json(tmp / "history.json", history.epochs)
        write_json(tmp / "selection.json", {"epoch": history.best_epoch, "epochs": cfg.epochs, "by": selected_by})
        plot_history(history.epochs, tmp / "training.png", title=f"{cfg.method} / {cfg.model.backbone}")
        # a noise image of the right shape: no patient pixels in the model's input example
        example = np.random.default_rng(0).random((2, *train.x.shape[1:]), dtype=np.float32)
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, pip_requirements=tracking.MODEL_PIP_REQUIREMENTS,
        )
        mlflow.log_artifact(str(tmp / "training.png"))
        mlflow.log_dict(dataclasses.asdict(spec), "model_spec.json")
        final_val = history.epochs[history.best_epoch - 1].get("val_accuracy", float("nan"))
        model_sha256 = sha256_file(tmp / "model.pt")
        mlflow.set_tag(evidence.TRAINED_MODEL_TAG, model_sha256)  # what register checks the model file against
        run_info = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id,
                    "model_uri": info.model_uri, "model_sha256": model_sha256,
                    "method": cfg.method, "backbone": cfg.model.backbone, "selected_epoch": history.best_epoch,
                    "selected_by": selected_by}
        write_json(tmp / "run.json", run_info)
    shutil.rmtree(resume_dir, ignore_errors=True)  # the outputs are in place: nothing left to resume
    log.info("trained %s/%s: val accuracy %.3f; MLflow run %s", cfg.method, cfg.model.backbone,
             final_val, run_info["run_id"])
    return TrainResult(Path(out_dir), run_info["run_id"], info.model_uri, final_val)


if __name__ == "__main__":  # one rank of a distributed run: torchrun -m medrobust.stages.train PARAMS DATASET OUT
    from medrobust.params import params_from_text
    from medrobust.utils import setup_logging

    setup_logging()
    run(params_from_text(Path(sys.argv[1]).read_text()), sys.argv[2], sys.argv[3])
