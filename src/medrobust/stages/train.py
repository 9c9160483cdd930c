"""Stage 3 — train: a model with the training method named in ``train.method``.

The method comes from :data:`medrobust.defenses.DEFENSES`, the backbone from
:data:`medrobust.models.MODELS`. One MLflow run is opened here and re-used by evaluate and register:
it holds the params, per-epoch metrics, the model, and later the robustness results.

Outputs (in ``out_dir``, written atomically):

* ``model.pt`` + ``model.json`` — the final weights (a state dict) and the model spec;
* ``checkpoints/epoch_NNN.pt`` — model and optimiser state after every epoch;
* ``history.json`` + ``training.png`` — per-epoch metrics;
* ``run.json`` — the MLflow run id and the logged model's URI.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medrobust import tracking
from medrobust.config import Params
from medrobust.data.shards import ArraySplit, load_split
from medrobust.defenses import Defense, get_defense
from medrobust.evaluation.plots import plot_history
from medrobust.models import Classifier, ModelSpec, build_model, save_model, set_trainable, spec_defaults
from medrobust.training import train_model
from medrobust.utils import atomic_output_dir, resolve_device, seed_everything, sha256_file, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    run_id: str
    model_uri: str
    final_val_accuracy: float


def model_spec(params: Params, defense: Defense, in_channels: int = 1) -> ModelSpec:
    """The model spec from ``train.model``, with the fields the training method requires."""
    m = params.train.model
    spec = ModelSpec(backbone=m.backbone, num_classes=len(params.data.classes), in_channels=in_channels,
                     width=m.width, image_size=params.data.image_size, head=m.head, head_hidden=m.head_hidden,
                     **spec_defaults(m.backbone, in_channels, pretrained=bool(m.pretrained)))
    if defense.model_overrides:
        log.info("method %s sets the model's %s", defense.name, defense.model_overrides)
        spec = dataclasses.replace(spec, **defense.model_overrides)
    return spec


def build_method(params: Params, method: str, train: ArraySplit,
                 device: torch.device | str = "cpu") -> tuple[Classifier, Defense, ModelSpec]:
    """The model and the training method ``method`` as params.yaml configures them, ready to train.

    Applies the method's model requirements (e.g. dual BN, a RAN head), loads local pretrained
    weights, freezes what ``trainable`` says, and calls the method's ``prepare`` hook with the
    training data and its DICOM modality.
    """
    cfg = params.train
    defense = get_defense(method, seed=params.seed, **dict(cfg.methods.get(method) or {}))
    spec = model_spec(params, defense, in_channels=int(train.x.shape[1]))
    model = build_model(spec, pretrained=cfg.model.pretrained or None)
    trainable = defense.trainable or cfg.model.trainable
    n_train = len(set_trainable(model, trainable))
    log.info("%s/%s: %d of %d parameter tensors train (%s)", method, spec.backbone, n_train,
             len(list(model.parameters())), trainable)
    model = model.to(device)
    modality = str(train.manifest["modality"].mode().iloc[0]) if "modality" in train.manifest else "default"
    defense.prepare(model, train.x.to(device), train.y.to(device), modality=modality)
    return model, defense, spec


def run(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> TrainResult:
    """Train, checkpoint every epoch, log to MLflow."""
    import mlflow

    cfg = params.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(params.seed)
    train, val = load_split(dataset_dir, "train"), load_split(dataset_dir, "val")
    device = resolve_device(params.device)
    model, defense, spec = build_method(params, cfg.method, train, device)
    tracking.configure(params)
    with atomic_output_dir(out_dir) as tmp, mlflow.start_run(run_name=f"{cfg.method}-{cfg.model.backbone}") as active:
        mlflow.log_params(tracking.flatten(params.to_dict()))
        mlflow.set_tags({"medrobust.method": cfg.method, "medrobust.backbone": cfg.model.backbone,
                         "medrobust.stage": "train"})
        history = train_model(
            model, defense, train, val, epochs=cfg.epochs, batch_size=cfg.batch_size, optim=cfg.optim,
            seed=params.seed, checkpoint_dir=tmp / "checkpoints", hflip=cfg.hflip, clean_warmup_epochs=cfg.clean_warmup_epochs,
            on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch), desc=cfg.method,
        )
        model = model.cpu()  # saved and logged as a CPU model
        save_model(model, spec, tmp)
        write_json(tmp / "history.json", history.epochs)
        plot_history(history.epochs, tmp / "training.png", title=f"{cfg.method} / {cfg.model.backbone}")
        # a noise image of the right shape: no patient pixels in the model's input example
        example = np.random.default_rng(0).random((2, *train.x.shape[1:]), dtype=np.float32)
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, pip_requirements=tracking.MODEL_PIP_REQUIREMENTS,
        )
        mlflow.log_artifact(str(tmp / "training.png"))
        mlflow.log_dict(dataclasses.asdict(spec), "model_spec.json")
        final_val = history.epochs[-1].get("val_accuracy", float("nan"))
        run_info = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id,
                    "model_uri": info.model_uri, "model_sha256": sha256_file(tmp / "model.pt"),
                    "method": cfg.method, "backbone": cfg.model.backbone}
        write_json(tmp / "run.json", run_info)
    log.info("trained %s/%s: val accuracy %.3f; MLflow run %s", cfg.method, cfg.model.backbone,
             final_val, run_info["run_id"])
    return TrainResult(Path(out_dir), run_info["run_id"], info.model_uri, final_val)
