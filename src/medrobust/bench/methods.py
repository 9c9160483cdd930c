"""``medrobust bench methods``: clean and PGD robust accuracy of every training method on the default data.

Every method trains with the same budget — the backbone, epochs, batch size, optimiser and seed of
``params.yaml``'s ``train`` section, each method with its own ``train.methods.<name>`` settings —
on the built-in synthetic dataset, and is attacked on the test split with the same white-box
attacks: FGSM and PGD-20 (L∞, random start) at ``eps``. The table is written as JSON and markdown
(``benchmarks/methods.json`` / ``.md`` in the repository hold a reference run and its command).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medrobust.attacks import get_attack
from medrobust.bench.data import default_dataset
from medrobust.data.shards import load_split
from medrobust.defenses import TRAINING_METHODS
from medrobust.evaluation.metrics import clean_metrics, evaluate_attack
from medrobust.models import save_model
from medrobust.params import Params
from medrobust.training import build_method, train_model
from medrobust.utils import seed_everything

log = logging.getLogger(__name__)


def check_methods(methods: list[str] | None) -> list[str]:
    """``methods``, or every registered training method (sorted).

    Args:
        methods: training method names; None or empty: all of them.

    Returns:
        The method names (``methods`` itself when given).

    Raises:
        KeyError: an unknown method, listing the registered ones.
    """
    methods = methods or sorted(TRAINING_METHODS)
    unknown = sorted(set(methods) - set(TRAINING_METHODS))
    if unknown:
        raise KeyError(f"unknown training method(s) {unknown}; available: {', '.join(sorted(TRAINING_METHODS))}")
    return methods


def bench_methods(params: Params, methods: list[str] | None = None, dataset_dir: Path | None = None,
                  eps: float = 8 / 255, pgd_steps: int = 20, epochs: int | None = None) -> dict[str, Any]:
    """Train every method (or ``methods``) with the same budget, then attack it.

    Args:
        params: the configuration (``train``: backbone, epochs, batch, optimiser, each method's settings).
        methods: the methods (default: every registered one).
        dataset_dir: an ingested built-in dataset (made in a temporary folder when missing).
        eps: the L∞ budget of FGSM and PGD.
        pgd_steps: PGD iterations.
        epochs: epochs per method (default ``train.epochs``).

    Returns:
        The report: one row per method (clean/FGSM/PGD accuracy, training seconds, model).

    Raises:
        KeyError: an unknown method.
    """
    methods = check_methods(methods)
    dataset = default_dataset(params, dataset_dir)
    train, val, test = (load_split(dataset, s) for s in ("train", "val", "test"))
    cfg = params.train
    epochs = epochs or cfg.epochs
    # frozen-encoder methods need a pre-trained encoder; without local ImageNet/CLIP weights they start
    # from the encoder of this run's standard model (trained first)
    frozen = [m for m in methods if TRAINING_METHODS[m].trainable == "head"]
    if frozen and not cfg.model.pretrained:
        methods = ["standard", *[m for m in methods if m != "standard"]]
    encoder_file: Path | None = None
    rows = []
    for method in methods:
        seed_everything(params.seed)
        start = time.perf_counter()
        run_cfg, note = cfg, ""
        if method in frozen and encoder_file is not None:
            run_cfg = params.updated({"train": {"model": {"pretrained": str(encoder_file)}}}).train
            note = "encoder: this run's standard model (frozen)"
        model, trainer, spec = build_method(run_cfg, method, train, len(params.data.classes), params.data.image_size,
                                            seed=params.seed)
        train_model(model, trainer, train, val, epochs=epochs, batch_size=cfg.batch_size, optim=cfg.optim,
                    seed=params.seed, hflip=cfg.hflip, clean_warmup_epochs=cfg.clean_warmup_epochs, desc=method)
        train_s = time.perf_counter() - start
        model.eval()
        if method == "standard" and frozen and not cfg.model.pretrained:
            encoder_file = save_model(model, spec, Path(tempfile.mkdtemp(prefix="medrobust-encoder-")))
        clean = clean_metrics(model, test.x, test.y)
        fgsm = evaluate_attack(model, get_attack("fgsm", model, eps=eps), test.x, test.y)
        pgd = evaluate_attack(model, get_attack("pgd", model, eps=eps, steps=pgd_steps, random_start=True,
                                                seed=params.seed), test.x, test.y)
        row = {"method": method, "clean_accuracy": clean["accuracy"], "clean_auc": clean["auc"],
               "fgsm_accuracy": fgsm.accuracy, "pgd_accuracy": pgd.accuracy, "train_seconds": train_s,
               "settings": cfg.settings(method), "note": note,
               "model": {"backbone": spec.backbone, "head": spec.head, "adapter": spec.adapter,
                         "dual_bn": spec.dual_bn, "trainable": trainer.trainable or cfg.model.trainable}}
        rows.append(row)
        log.info("%-20s clean %.3f  FGSM %.3f  PGD-%d %.3f  (%.0f s)", method, row["clean_accuracy"],
                 row["fgsm_accuracy"], pgd_steps, row["pgd_accuracy"], train_s)
    report = {"dataset": "built-in synthetic (params.yaml data.synthetic)", "n_test": len(test),
              "backbone": cfg.model.backbone, "epochs": epochs, "batch_size": cfg.batch_size,
              "optimizer": {"name": cfg.optim.name, "lr": cfg.optim.lr}, "seed": params.seed,
              "clean_warmup_epochs": cfg.clean_warmup_epochs,
              "attack": {"eps": eps, "pgd_steps": pgd_steps, "norm": "linf"}, "rows": rows,
              "threads": torch.get_num_threads()}
    return report


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the budget, then one table row per method.

    Args:
        report: :func:`bench_methods`'s report.
        command: the command line that reproduces it.

    Returns:
        The markdown page.
    """
    a = report["attack"]
    lines = [
        "# Training methods on the built-in data",
        "",
        f"Command: `{command}`",
        "",
        f"Same budget for every method: backbone `{report['backbone']}`, {report['epochs']} epochs, batch "
        f"{report['batch_size']}, {report['optimizer']['name']} lr {report['optimizer']['lr']}, seed {report['seed']}; "
        f"each method with its `train.methods` settings from params.yaml. Test split: {report['n_test']} images. "
        f"White-box L∞ attacks at ε = {a['eps'] * 255:.0f}/255: FGSM and PGD-{a['pgd_steps']} with a random start.",
        "",
        f"Clean warm-up epochs (clean CE before the method): {report.get('clean_warmup_epochs', 0)}.",
        "",
        "| method | clean acc | clean AUC | FGSM acc | PGD acc | train s | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['clean_accuracy']:.3f} | {r['clean_auc']:.3f} | {r['fgsm_accuracy']:.3f} | "
                     f"{r['pgd_accuracy']:.3f} | {r['train_seconds']:.0f} | {r.get('note', '')} |")
    l2 = [r["method"] for r in report["rows"] if (r.get("settings") or {}).get("norm") == "l2"]
    if l2:
        lines += ["", f"Trained against an L2 budget, as their papers do (see their `train.methods` settings): "
                      f"{', '.join(l2)}; every method is attacked with the same L∞ attacks."]
    return "\n".join(lines) + "\n"


__all__ = ["bench_methods", "check_methods", "to_markdown"]
