"""``medrobust bench methods``: every training method on the default data, attacked honestly, over seeds.

Every method trains with the same budget — the backbone, epochs, batch size, optimiser of
``params.yaml``'s ``train`` section, each method with its own ``train.methods.<name>`` settings —
on the built-in synthetic dataset, once per seed (``params.seed + s``). On the test split each
model then faces

* **the shared L∞ suite** at ε = ``eps`` (8/255): FGSM, PGD-20 with a random start and the
  AutoAttack-style ensemble (its budget from ``evaluate.attacks``' ``autoattack`` entry), and the
  worst case per point over the three, as the evaluate stage counts it;
* **its own threat model**, for methods trained against an L2 budget (DPAAT, RTDA, RobustAugMix, as
  their papers attack them): PGD-L2-20 and AutoAttack-L2 at the method's own ε (the one it trained
  with, after its per-modality choice), and their worst case;
* **the gradient-masking checks** of :mod:`medrobust.evaluation.masking` (``evaluate.masking``).

Each figure is the mean over seeds ± their sd, with a 95% Wilson interval on the pooled test
predictions (seeds × test images; it shows the test set's sampling error, the sd the seed spread).
The ranking is by the shared L∞ worst case; a method that fails a masking check for any seed is
marked and **not ranked**: its robust accuracy may be an artefact of masked gradients.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.attacks.spec import AttackSpec
from medrobust.bench.data import default_dataset
from medrobust.config import eps_label
from medrobust.data.shards import ArraySplit, load_split
from medrobust.defenses import TRAINING_METHODS
from medrobust.evaluation import conditions as cond
from medrobust.evaluation.masking import run_masking_checks
from medrobust.evaluation.stats import proportion
from medrobust.models import save_model
from medrobust.params import Params
from medrobust.training import build_method, train_model
from medrobust.utils import seed_everything, setup_logging

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


def _autoattack_budget(params: Params) -> dict[str, int]:
    spec = next((s for s in params.evaluate.attacks if s.name == "autoattack"), None)
    return {"steps": (spec.steps if spec and spec.steps else 30), "n_queries": (spec.n_queries if spec and spec.n_queries
                                                                                 else 300)}


def threat_models(params: Params, trainer: Any, eps: float, pgd_steps: int) -> dict[str, tuple[float, list[AttackSpec]]]:
    """The suites a method is attacked with: ``shared_linf``, and ``own_l2`` for an L2-trained method.

    Args:
        params: the configuration (the AutoAttack budget of ``evaluate.attacks``).
        trainer: the prepared training method (its ``norm`` and its ε: ``active_eps`` or ``eps``).
        eps: the shared L∞ budget.
        pgd_steps: PGD iterations.

    Returns:
        name -> (ε, attacks).
    """
    aa = _autoattack_budget(params)
    suites = {"shared_linf": (eps, [AttackSpec(name="fgsm", norm="linf", eps=(eps,)),
                                    AttackSpec(name="pgd", norm="linf", eps=(eps,), steps=pgd_steps, random_start=True),
                                    AttackSpec(name="autoattack", norm="linf", eps=(eps,), **aa)])}
    if getattr(trainer, "norm", None) == "l2":
        own = float(getattr(trainer, "active_eps", None) or trainer.eps)
        suites["own_l2"] = (own, [AttackSpec(name="pgdl2", norm="l2", eps=(own,), steps=pgd_steps, random_start=True),
                                  AttackSpec(name="autoattack", norm="l2", eps=(own,), **aa)])
    return suites


def attack_model(model: Any, test: ArraySplit, suites: dict[str, tuple[float, list[AttackSpec]]], params: Params,
                 seed: int) -> dict[str, Any]:
    """Every suite's attacks, their per-point worst case, then the masking checks.

    Args:
        model: the trained classifier.
        test: the test split.
        suites: :func:`threat_models`.
        params: the configuration (``evaluate.batch_size``, ``early_stop``, ``masking``).
        seed: the attacks' seed.

    Returns:
        ``clean_correct``, per suite ``{eps, attacks: {key: robust count}, worst_case: robust count}``,
        ``masking`` (the checks as dicts), ``n``.
    """
    ev = params.evaluate
    y = test.y.numpy().astype(int)
    clean = cond.clean(model, test.x, ev.batch_size)
    out: dict[str, Any] = {"n": len(y), "clean_correct": int((clean.logits.argmax(1) == y).sum()), "suites": {}}
    accuracy_table: dict[str, dict[str, float]] = {}
    for name, (eps, specs) in suites.items():
        runs = {s.key: cond.attacked(model, s, eps, test.x, test.y, ev.batch_size, ev.early_stop, seed) for s in specs}
        worst = cond.worst_case(list(runs.values()), y)
        out["suites"][name] = {"eps": eps, "eps_label": eps_label(eps),
                               "attacks": {k: int(c.robust.sum()) for k, c in runs.items()},
                               "worst_case": int(worst.robust.sum())}
        for k, c in runs.items():
            accuracy_table.setdefault(k, {})[eps_label(eps)] = float(c.robust.mean())
    shared_eps = suites["shared_linf"][0]
    if ev.masking.enabled:
        checks = run_masking_checks(model, test.x, test.y, accuracy_table, ev.masking, shared_eps, eps_label(shared_eps),
                                    seed=seed)
        out["masking"] = [c.to_dict() for c in checks]
    else:
        out["masking"] = []
    return out


def seed_rows(params: Params, methods: list[str], dataset: Path, seed: int, epochs: int, eps: float,
              pgd_steps: int) -> list[dict[str, Any]]:
    """Train and attack every method with one seed; one row per method.

    Args:
        params: the configuration (``train``, ``evaluate``).
        methods: the methods to report (checked).
        dataset: an ingested built-in dataset.
        seed: the training seed.
        epochs: epochs per method.
        eps: the shared L∞ budget.
        pgd_steps: PGD iterations (L∞ and L2).

    Returns:
        ``{"method", "seed", "train_seconds", "note", "train_norm", **attack_model(...)}`` per method.
    """
    setup_logging()
    train, val, test = (load_split(dataset, s) for s in ("train", "val", "test"))
    cfg = params.train
    # frozen-encoder methods need a pre-trained encoder; without local ImageNet/CLIP weights they start
    # from the encoder of the same seed's standard model (trained first)
    frozen = [m for m in methods if TRAINING_METHODS[m].trainable == "head"]
    order = ["standard", *[m for m in methods if m != "standard"]] if frozen and not cfg.model.pretrained else methods
    rows = []
    encoder_file: Path | None = None
    for method in order:
        seed_everything(seed)
        start = time.perf_counter()
        run_cfg, note = cfg, ""
        if method in frozen and encoder_file is not None:
            run_cfg = params.updated({"train": {"model": {"pretrained": str(encoder_file)}}}).train
            note = "encoder: the same seed's standard model (frozen)"
        model, trainer, spec = build_method(run_cfg, method, train, len(params.data.classes), params.data.image_size,
                                            seed=seed)
        train_model(model, trainer, train, val, epochs=epochs, batch_size=cfg.batch_size, optim=cfg.optim,
                    seed=seed, hflip=cfg.hflip, clean_warmup_epochs=cfg.clean_warmup_epochs, desc=f"{method} seed {seed}")
        train_s = time.perf_counter() - start
        model.eval()
        if method == "standard" and frozen and not cfg.model.pretrained:
            encoder_file = save_model(model, spec, Path(tempfile.mkdtemp(prefix="medrobust-encoder-")))
        if method not in methods:
            continue
        result = attack_model(model, test, threat_models(params, trainer, eps, pgd_steps), params, seed)
        rows.append({"method": method, "seed": seed, "train_seconds": round(train_s, 1), "note": note,
                     "train_norm": getattr(trainer, "norm", None), **result})
        shared = result["suites"]["shared_linf"]
        log.info("seed %d %-20s clean %.3f  L∞ worst case %.3f  masking %s  (%.0f s)", seed, method,
                 result["clean_correct"] / result["n"], shared["worst_case"] / result["n"],
                 "ok" if all(c["passed"] for c in result["masking"]) else "FAILED", train_s)
    return rows


def bench_methods(params: Params, methods: list[str] | None = None, dataset_dir: Path | None = None,
                  eps: float = 8 / 255, pgd_steps: int = 20, epochs: int | None = None, seeds: int = 3,
                  jobs: int = 1) -> dict[str, Any]:
    """Train every method (or ``methods``) once per seed with the same budget, then attack it in both threat models.

    Args:
        params: the configuration (``train``: backbone, epochs, batch, optimiser, each method's settings).
        methods: the methods (default: every registered one).
        dataset_dir: an ingested built-in dataset (made in a temporary folder when missing).
        eps: the shared L∞ budget.
        pgd_steps: PGD iterations (L∞ and L2).
        epochs: epochs per method (default ``train.epochs``).
        seeds: training seeds per method (``params.seed``, ``params.seed + 1``, ...).
        jobs: seeds run in parallel, one process each (``spawn``); the rows do not depend on it.

    Returns:
        The report: one row per (method, seed) and a summary per method, ranked.

    Raises:
        KeyError: an unknown method.
    """
    methods = check_methods(methods)
    dataset = default_dataset(params, dataset_dir)
    test_n = len(load_split(dataset, "test"))
    cfg = params.train
    epochs = epochs or cfg.epochs
    seed_list = [params.seed + s for s in range(seeds)]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(seed_rows, params, methods, dataset, seed, epochs, eps, pgd_steps) for seed in seed_list]
            per_seed = [f.result() for f in futures]
    else:
        per_seed = [seed_rows(params, methods, dataset, seed, epochs, eps, pgd_steps) for seed in seed_list]
    rows = [r for seed in per_seed for r in seed]
    return {"dataset": "built-in synthetic (params.yaml data.synthetic)", "n_test": test_n,
            "backbone": cfg.model.backbone, "epochs": epochs, "batch_size": cfg.batch_size,
            "optimizer": {"name": cfg.optim.name, "lr": cfg.optim.lr}, "seeds": seed_list,
            "clean_warmup_epochs": cfg.clean_warmup_epochs, "attack": {"eps": eps, "pgd_steps": pgd_steps,
                                                                       **_autoattack_budget(params)},
            "rows": rows, "summary": summarise(rows, methods), "threads": torch.get_num_threads(), "jobs": jobs}


def _figure(rows: list[dict[str, Any]], count: Any) -> dict[str, Any]:
    """Mean ± sd over seeds of a per-seed count / n, and the Wilson CI of the pooled counts."""
    values = [count(r) / r["n"] for r in rows]
    pooled = proportion(sum(count(r) for r in rows), sum(r["n"] for r in rows))
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "ci": pooled["ci"], "per_seed": values}


def summarise(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: clean, shared L∞ worst case, own-threat worst case, masking; then the ranking.

    Args:
        rows: :func:`bench_methods`' rows.
        methods: the methods, in report order.

    Returns:
        ``{"methods": {name: summary}, "ranking": [names], "not_ranked": {name: failed checks}}``.
    """
    out: dict[str, Any] = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        entry = {"clean": _figure(mine, lambda r: r["clean_correct"]),
                 "linf_worst_case": _figure(mine, lambda r: r["suites"]["shared_linf"]["worst_case"]),
                 "linf_attacks": {k: _figure(mine, lambda r, k=k: r["suites"]["shared_linf"]["attacks"][k])
                                  for k in mine[0]["suites"]["shared_linf"]["attacks"]},
                 "failed_checks": sorted({c["name"] for r in mine for c in r["masking"] if not c["passed"]}),
                 "train_seconds": float(np.median([r["train_seconds"] for r in mine])), "note": mine[0]["note"],
                 "train_norm": mine[0]["train_norm"]}
        if "own_l2" in mine[0]["suites"]:
            own = mine[0]["suites"]["own_l2"]
            entry["own_l2"] = {"eps": own["eps"], "worst_case": _figure(mine, lambda r: r["suites"]["own_l2"]["worst_case"]),
                               "attacks": {k: _figure(mine, lambda r, k=k: r["suites"]["own_l2"]["attacks"][k])
                                           for k in own["attacks"]}}
        out[m] = entry
    ranked = sorted((m for m in out if not out[m]["failed_checks"]), key=lambda m: -out[m]["linf_worst_case"]["mean"])
    return {"methods": out, "ranking": ranked, "not_ranked": {m: out[m]["failed_checks"] for m in out
                                                               if out[m]["failed_checks"]}}


__all__ = ["attack_model", "bench_methods", "check_methods", "summarise", "threat_models"]
