"""RAN's upstream stage (``medrobust pretrain``): noisy vision-language pretraining, then light-weight heads.

The RAN paper (arXiv 2407.02716) pre-trains a vision-language model on upstream data with a share of
adversarially perturbed image–caption pairs and asks what that noise does to the heads fine-tuned on
its frozen features. This stage runs that protocol on the ingested data (:mod:`medrobust.pretrain`):

1. captions for the train and validation splits from templates over the labels and header facts;
2. a tiny CLIP pre-trained on the clean train pairs — the ``r = 0`` model and the attacks' surrogate;
3. for each noise ratio r > 0: exactly ``round(r·N)`` train pairs perturbed against the surrogate
   (image PGD on the contrastive loss, greedy caption edits), and a fresh CLIP (the same
   initialisation) pre-trained on them;
4. for each ratio and each head of ``pretrain.downstream.heads`` (``linear_probe``, ``mlp_tuning``,
   ``nmtune`` — RAN's objective without its margin term, i.e. NMTune's covariance and consistency
   regularisers — and ``ran``): the head trained on the frozen image tower, then tested in
   distribution (the test split) and out of distribution (the test split under a natural shift),
   clean and under L∞ PGD, each accuracy with its Wilson 95 % interval and the number of images.

Outputs (in ``out_dir``, written atomically):

* ``clip_rNN.pt`` — the open_clip state dict pre-trained at NN % noise (loads with ``weights_only``, and
  as ``train.model.backbone: clip_vit_tiny`` with ``train.model.pretrained`` pointing at it);
* ``pretrain.json`` — per ratio: the pairs' counts, three example caption edits, the loss per epoch,
  the contrastive loss on the clean validation pairs, and per head the four accuracies;
* ``pretrain.md`` and ``pretrain.png`` — the table and the accuracy against the noise ratio;
* ``run.json`` — the MLflow run (params, one metric per ratio/head/condition with the ratio in percent
  as its step, the files above as artifacts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medrobust.attacks import PGD
from medrobust.data.shards import ArraySplit, load_split
from medrobust.evaluation.conditions import shifted_images
from medrobust.evaluation.stats import proportion
from medrobust.models.inference import predict_logits
from medrobust.params import Params
from medrobust.pretrain import (ClipConfig, build_clip, caption_vocabulary, contrastive_loss, make_captions,
                                make_noisy_pairs, pretrain_clip)
from medrobust.pretrain.config import PretrainConfig
from medrobust.registry import tracking
from medrobust.stages.advgen import attack_dataset
from medrobust.training import ModelConfig, OptimConfig, TrainConfig, build_method, train_model
from medrobust.utils import atomic_output_dir, resolve_device, seed_everything, write_json

log = logging.getLogger(__name__)

#: the conditions each head is tested under
CONDITIONS = ("id_clean", "id_pgd", "ood_clean", "ood_pgd")


@dataclass(frozen=True)
class PretrainResult:
    """What the stage wrote.

    Attributes:
        out_dir: the output folder.
        run_id: the MLflow run.
        results: ``pretrain.json``'s ``ratios`` (one entry per noise ratio).
    """

    out_dir: Path
    run_id: str
    results: list[dict[str, Any]]


def percent(ratio: float) -> int:
    """A noise ratio in whole percent (the output files' ``NN``)."""
    return round(ratio * 100)


def _labels(split: ArraySplit, classes: list[str]) -> list[str]:
    return [classes[i] for i in split.y.tolist()]


def head_method(head: str) -> tuple[str, dict[str, Any]]:
    """The training method and its settings behind a head name (``nmtune``: ``ran`` with ``adv_weight = 0``)."""
    return ("ran", {"adv_weight": 0.0}) if head == "nmtune" else (head, {})


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    logits = predict_logits(model, x)
    return proportion(int((logits.argmax(1).cpu() == y).sum()), len(y))


def downstream(params: Params, weights: Path, head: str, train: ArraySplit, val: ArraySplit, test: ArraySplit,
               shifted: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """Train one head on the frozen ``clip_vit_tiny`` tower in ``weights``; its four accuracies.

    Returns:
        ``{condition: estimate}`` for :data:`CONDITIONS` (each a Wilson-interval :func:`proportion`).
    """
    cfg = params.pretrain.downstream
    method, settings = head_method(head)
    train_cfg = TrainConfig(method=method, model=ModelConfig(backbone="clip_vit_tiny", pretrained=str(weights)),
                            epochs=cfg.epochs, batch_size=cfg.batch_size, optim=OptimConfig(lr=cfg.lr),
                            methods={method: settings} if settings else {})
    model, trainer, _ = build_method(train_cfg, method, train, len(params.data.classes), params.data.image_size,
                                     seed=params.seed, device=device)
    train_model(model, trainer, train, val, epochs=cfg.epochs, batch_size=cfg.batch_size, optim=train_cfg.optim,
                seed=params.seed, desc=head)
    model.eval()

    def attacked(x: torch.Tensor) -> torch.Tensor:  # each set from the same seeded start
        attack = PGD(model, eps=cfg.attack_eps, steps=cfg.attack_steps, random_start=True, seed=params.seed + 303)
        return attack_dataset(attack, x, test.y, 128, device)

    return {
        "id_clean": _accuracy(model, test.x, test.y),
        "id_pgd": _accuracy(model, attacked(test.x), test.y),
        "ood_clean": _accuracy(model, shifted, test.y),
        "ood_pgd": _accuracy(model, attacked(shifted), test.y),
    }


def _clip_config(cfg: PretrainConfig) -> ClipConfig:
    return ClipConfig(cfg.context_length, cfg.text_width, cfg.text_heads, cfg.text_layers)


def run(params: Params, dataset_dir: str | Path, out_dir: str | Path) -> PretrainResult:
    """Pre-train at every noise ratio, train and test every head; write the outputs and the MLflow run.

    Args:
        params: validated params (``pretrain``, ``data``, ``seed``, ``device``, ``mlflow``).
        dataset_dir: the ingest stage's output.
        out_dir: the stage's output folder (replaced atomically on success).

    Returns:
        The folder, the MLflow run id and the per-ratio results.
    """
    import mlflow

    from medrobust.stages.pretrain_report import plot_ratios, to_markdown

    cfg = params.pretrain
    seed_everything(params.seed + 202)
    train, val, test = (load_split(dataset_dir, s) for s in ("train", "val", "test"))
    classes = list(params.data.classes)
    captions = make_captions(train.manifest, _labels(train, classes), params.seed)
    val_captions = make_captions(val.manifest, _labels(val, classes), params.seed + 1)
    vocabulary = caption_vocabulary(captions)
    device = resolve_device(params.device)
    shift = cfg.downstream
    shifted = shifted_images(test.x, shift.shift, shift.shift_severity, params.seed, 256)
    results: list[dict[str, Any]] = []
    tracking.configure(params.mlflow)
    with atomic_output_dir(out_dir) as tmp, mlflow.start_run(run_name="pretrain-ran") as active:
        tracking.claim_run()
        mlflow.log_params(tracking.flatten({"seed": params.seed, "pretrain": cfg.model_dump(mode="json")}))
        mlflow.set_tags({"medrobust.stage": "pretrain", "medrobust.method": "ran"})
        surrogate = None
        for ratio in tqdm([0.0, *[r for r in cfg.noise_ratios if r > 0]], desc="pretrain ratios"):
            images, texts, summary, examples = train.x, captions, {"pairs": len(train), "noisy": 0,
                                                                   "noisy_images": 0, "noisy_captions": 0}, []
            if ratio > 0:
                pairs = make_noisy_pairs(surrogate, train.x, captions, ratio=ratio, vocabulary=vocabulary,
                                         eps=cfg.image_eps, steps=cfg.image_steps, edits=cfg.caption_edits,
                                         modalities=cfg.modalities, seed=params.seed + percent(ratio))
                images, texts, summary = pairs.images, pairs.captions, pairs.summary()
                examples = [{"caption": captions[i], "perturbed": texts[i]}
                            for i in pairs.text_noisy.nonzero().flatten()[:3].tolist()]
            model = build_clip(_clip_config(cfg), seed=params.seed).to(device)
            history = pretrain_clip(model, images, texts, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, seed=params.seed, desc=f"pretrain r={ratio:g}")
            weights = tmp / f"clip_r{percent(ratio):02d}.pt"
            torch.save(model.cpu().clip_state_dict(), weights)
            model.to(device)
            if ratio == 0:
                surrogate = model
            if ratio not in cfg.noise_ratios:
                continue
            entry: dict[str, Any] = {"ratio": ratio, "weights": weights.name, "pairs": summary, "examples": examples,
                                     "loss": history, "val_contrastive_loss": contrastive_loss(model, val.x,
                                                                                               val_captions),
                                     "heads": {}}
            for head in shift.heads:
                entry["heads"][head] = downstream(params, weights, head, train, val, test, shifted, device)
                for cond, est in entry["heads"][head].items():
                    mlflow.log_metric(f"{head}_{cond}", est["value"], step=percent(ratio))
                log.info("pretrain r=%g %s: %s", ratio, head, ", ".join(
                    f"{c} {e['value']:.3f}" for c, e in entry["heads"][head].items()))
            mlflow.log_metric("val_contrastive_loss", entry["val_contrastive_loss"], step=percent(ratio))
            results.append(entry)
        report = {"ratios": results, "n_train_pairs": len(train), "n_test": len(test), "shift": shift.shift,
                  "shift_severity": shift.shift_severity, "attack": {"name": "pgd", "norm": "linf",
                                                                     "eps": shift.attack_eps,
                                                                     "steps": shift.attack_steps}}
        write_json(tmp / "pretrain.json", report)
        plot_ratios(report, tmp / "pretrain.png")
        (tmp / "pretrain.md").write_text(to_markdown(report))
        for name in ("pretrain.json", "pretrain.png", "pretrain.md"):
            mlflow.log_artifact(str(tmp / name))
        write_json(tmp / "run.json", {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id})
    log.info("pretrain: %d noise ratios, %d heads; MLflow run %s", len(results), len(shift.heads), active.info.run_id)
    return PretrainResult(Path(out_dir), active.info.run_id, results)


__all__ = ["CONDITIONS", "PretrainResult", "downstream", "head_method", "percent", "run"]
