"""``medrobust compare``: training methods side by side, patient-grouped k-fold cross-validation, with tests.

One test split says little about which of two methods is better: on ~100 images the sampling error
of an accuracy is several points. ``compare`` pools every image of the ingested dataset and splits
it ``folds`` times by patient (scikit-learn's ``GroupKFold`` on the patient pseudonyms: no patient
is ever in a fold's training and test part at once). In every fold each method

* trains on the fold's training part with the same budget (``params.yaml``'s ``train`` section and
  the method's ``train.methods`` settings), from the same seed;
* is calibrated on a patient-disjoint validation part of the training patients (temperature and
  operating point, as the evaluate stage does);
* is tested on the held-out patients: clean accuracy, balanced accuracy at the operating point, ROC
  AUC, and the robust accuracy of the worst case over the evaluation suite at the gate's norm and ε
  (``register.gates``), as the gates count it.

All methods see the same folds, so the per-fold differences are paired: the paired Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``, exact for few folds) compares two methods fold by fold;
the Mann–Whitney U test (``scipy.stats.mannwhitneyu``) ignores the pairing. With 5 folds the
smallest two-sided Wilcoxon p-value is 2/2⁵ = 0.0625: five folds can show a consistent direction,
never p < 0.05 — the page says so. The out-of-fold accuracies (every image tested exactly once)
carry Wilson intervals over all images.

Outputs: ``<out>.json`` (every fold's numbers), ``<out>.md`` and ``<out>.png`` (a box plot per metric).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medrobust.bench.data import default_dataset
from medrobust.bench.methods import check_methods
from medrobust.config import ConfigError, eps_label
from medrobust.data.shards import ArraySplit, load_split
from medrobust.defenses import TRAINING_METHODS
from medrobust.evaluation import conditions as cond
from medrobust.evaluation.calibration import calibrate
from medrobust.evaluation.stats import proportion
from medrobust.params import Params
from medrobust.training import build_method, train_model
from medrobust.utils import seed_everything

log = logging.getLogger(__name__)

#: the per-fold figures, in table order
METRICS = ("clean_accuracy", "balanced_accuracy", "roc_auc", "robust_accuracy")
LABELS = {"clean_accuracy": "clean accuracy", "balanced_accuracy": "balanced accuracy (operating point)",
          "roc_auc": "ROC AUC", "robust_accuracy": "robust accuracy (worst case)"}


@dataclass(frozen=True)
class Fold:
    """One fold: image indices into the pooled dataset (patient-disjoint parts)."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def pooled_dataset(dataset_dir: Path) -> ArraySplit:
    """Every image of an ingested dataset (train, val and test splits) as one split, with its manifest rows."""
    parts = [load_split(dataset_dir, s) for s in ("train", "val", "test")]
    parts = [p for p in parts if len(p)]
    return ArraySplit(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                      pd.concat([p.manifest for p in parts], ignore_index=True))


def make_folds(groups: np.ndarray, n_folds: int, val_fraction: float, seed: int) -> list[Fold]:
    """Patient-grouped folds: ``GroupKFold`` for the test parts, then a grouped validation part per fold.

    Args:
        groups: ``[N]`` patient pseudonyms.
        n_folds: folds (at least 2, at most the number of patients).
        val_fraction: share of each fold's training patients kept for calibration.
        seed: seeds the validation draw.

    Returns:
        The folds; their test parts cover every image exactly once.

    Raises:
        ConfigError: fewer patients than folds.
    """
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    n_groups = len(np.unique(groups))
    if n_folds < 2 or n_folds > n_groups:
        raise ConfigError(f"--folds {n_folds}: needs 2 <= folds <= patients ({n_groups})")
    folds = []
    for i, (rest, test) in enumerate(GroupKFold(n_splits=n_folds).split(np.zeros(len(groups)), groups=groups)):
        inner = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed + i)
        tr, va = next(inner.split(rest, groups=groups[rest]))
        folds.append(Fold(i, np.sort(rest[tr]), np.sort(rest[va]), np.sort(test)))
    return folds


def _subset(data: ArraySplit, idx: np.ndarray) -> ArraySplit:
    t = torch.as_tensor(idx)
    return ArraySplit(data.x[t], data.y[t], data.manifest.iloc[idx].reset_index(drop=True))


def _gate_specs(params: Params) -> tuple[list[Any], str]:
    """The suite's attacks of the gate's norm, each at the gate ε (the worst case the gates use)."""
    norm = params.register.gate_norm
    specs = [s for s in params.evaluate.attacks if s.norm == norm]
    return specs, norm


def fold_scores(params: Params, method: str, data: ArraySplit, fold: Fold, epochs: int) -> dict[str, Any]:
    """Train ``method`` on one fold and score it on the fold's held-out patients.

    Args:
        params: the configuration (``train``, ``evaluate``, ``register.gates``, ``seed``).
        method: a training method.
        data: the pooled dataset.
        fold: the fold.
        epochs: training epochs.

    Returns:
        The fold's :data:`METRICS`, the test size, the correct counts and the training seconds.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    cfg, ev, g = params.train, params.evaluate, params.register
    train, val, test = (_subset(data, i) for i in (fold.train, fold.val, fold.test))
    seed = params.seed + fold.index
    seed_everything(seed)
    start = time.perf_counter()
    model, trainer, _ = build_method(cfg, method, train, len(params.data.classes), params.data.image_size, seed=seed)
    train_model(model, trainer, train, val, epochs=epochs, batch_size=cfg.batch_size, optim=cfg.optim, seed=seed,
                hflip=cfg.hflip, clean_warmup_epochs=cfg.clean_warmup_epochs, desc=f"{method} fold {fold.index + 1}")
    seconds = time.perf_counter() - start
    model.eval()
    cal = calibrate(cond.clean(model, val.x, ev.batch_size).logits, val.y.numpy(), ev.operating_point)
    y = test.y.numpy().astype(int)
    clean = cond.clean(model, test.x, ev.batch_size)
    probs = cal.probabilities(clean.logits)
    predicted = (probs[:, 1] >= cal.threshold).astype(int) if cal.threshold is not None else probs.argmax(1)
    specs, _ = _gate_specs(params)
    runs = [cond.attacked(model, s, g.gate_eps, test.x, test.y, ev.batch_size, ev.early_stop, params.seed) for s in specs]
    robust = cond.worst_case(runs, y).robust if runs else np.zeros(len(y), bool)
    correct = clean.logits.argmax(1) == y
    two_classes = len(np.unique(y)) == len(params.data.classes) == 2
    return {"fold": fold.index, "n_test": len(y), "n_train": len(fold.train), "n_val": len(fold.val),
            "clean_accuracy": float(correct.mean()), "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
            "roc_auc": float(roc_auc_score(y, probs[:, 1])) if two_classes else None,
            "robust_accuracy": float(robust.mean()), "clean_correct": int(correct.sum()),
            "robust_correct": int(robust.sum()), "train_seconds": round(seconds, 1)}


def paired_tests(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired Wilcoxon signed-rank and Mann–Whitney U p-values (two-sided) of two methods' fold scores.

    Args:
        a, b: one score per fold, same fold order.

    Returns:
        ``mean_difference`` (a − b), ``wilcoxon_p`` (1.0 when every fold ties) and ``mannwhitney_p``.
    """
    from scipy.stats import mannwhitneyu, wilcoxon

    x, y = np.asarray(a, float), np.asarray(b, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return {"mean_difference": None, "wilcoxon_p": None, "mannwhitney_p": None, "folds": 0}
    diff = x - y
    w = 1.0 if np.allclose(diff, 0) else float(wilcoxon(x, y, alternative="two-sided").pvalue)
    u = 1.0 if np.allclose(np.concatenate([x, y]), x[0]) else float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
    return {"mean_difference": float(diff.mean()), "wilcoxon_p": w, "mannwhitney_p": u, "folds": int(len(x))}


def compare_methods(params: Params, methods: list[str], n_folds: int = 5, dataset_dir: Path | None = None,
                    epochs: int | None = None) -> dict[str, Any]:
    """Cross-validate every method on the same patient-grouped folds, then test every pair.

    Args:
        params: the configuration.
        methods: training methods (at least 2).
        n_folds: folds.
        dataset_dir: an ingested dataset (the built-in one is made when missing).
        epochs: epochs per method and fold (default ``train.epochs``).

    Returns:
        The report: folds, per-method summaries, pairwise tests, wall time.

    Raises:
        ConfigError: an unknown method, fewer than 2 methods, a head-only method without a pre-trained encoder, or too few patients.
    """
    try:
        methods = check_methods(methods)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    if len(methods) < 2:
        raise ConfigError("compare needs at least 2 methods (--methods a,b,...)")
    frozen = [m for m in methods if TRAINING_METHODS[m].trainable == "head"]
    if frozen and not params.train.model.pretrained:
        raise ConfigError(f"{frozen} train only a head on a frozen encoder: set train.model.pretrained to a local "
                          "weights file to compare them")
    wall = time.perf_counter()
    data = pooled_dataset(default_dataset(params, dataset_dir))
    groups = data.manifest["patient_id"].astype(str).to_numpy()
    val_fraction = params.data.split.val / (params.data.split.train + params.data.split.val)
    folds = make_folds(groups, n_folds, val_fraction, params.seed)
    epochs = epochs or params.train.epochs
    scores: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for fold, method in tqdm(list(itertools.product(folds, methods)), desc="compare", mininterval=5):
        s = fold_scores(params, method, data, fold, epochs)
        scores[method].append(s)
        log.info("fold %d %-12s clean %.3f  robust %.3f  AUC %s  (%.0f s)", fold.index + 1, method,
                 s["clean_accuracy"], s["robust_accuracy"], "n/a" if s["roc_auc"] is None else f"{s['roc_auc']:.3f}",
                 s["train_seconds"])
    summary = {}
    for m in methods:
        rows = scores[m]
        summary[m] = {k: {"mean": _mean([r[k] for r in rows]), "sd": _sd([r[k] for r in rows])} for k in METRICS}
        n = sum(r["n_test"] for r in rows)
        summary[m]["pooled_clean_accuracy"] = proportion(sum(r["clean_correct"] for r in rows), n)
        summary[m]["pooled_robust_accuracy"] = proportion(sum(r["robust_correct"] for r in rows), n)
        summary[m]["train_seconds"] = float(np.median([r["train_seconds"] for r in rows]))
    pairs = {f"{a} vs {b}": {k: paired_tests([r[k] for r in scores[a]], [r[k] for r in scores[b]]) for k in METRICS}
             for a, b in itertools.combinations(methods, 2)}
    specs, norm = _gate_specs(params)
    return {"methods": methods, "folds": n_folds, "epochs": epochs, "seed": params.seed,
            "n_images": len(data), "n_patients": int(len(np.unique(groups))),
            "fold_sizes": [{"train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in folds],
            "robustness": {"attacks": [s.key for s in specs], "norm": norm, "eps": eps_label(params.register.gate_eps)},
            "backbone": params.train.model.backbone, "scores": scores, "summary": summary, "pairs": pairs,
            "wilcoxon_min_p": 2 / 2 ** n_folds, "wall_seconds": round(time.perf_counter() - wall, 1),
            "threads": torch.get_num_threads()}


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _sd(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


__all__ = ["LABELS", "METRICS", "Fold", "compare_methods", "fold_scores", "make_folds", "paired_tests",
           "pooled_dataset"]
