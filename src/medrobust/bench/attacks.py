"""``medrobust bench attacks``: throughput against torchattacks, and the value of early stopping.

Everything is measured in one run, on one model and one batch, with our attack and the reference
attack timed alternately (``repeats`` rounds, the median kept), so machine noise hits both alike;
the numbers to read are the ratios.

The model is a standard-trained small CNN on the built-in synthetic data (robust accuracy well
under 50% — the setting where early stopping matters). torchattacks is a test-only dependency
(``make test`` installs it); without it the reference columns are left empty.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medrobust.attacks import get_attack
from medrobust.bench.data import default_dataset
from medrobust.data.shards import load_split
from medrobust.defenses import get_method
from medrobust.evaluation.metrics import evaluate_attack
from medrobust.models import ModelSpec, accuracy, build_model
from medrobust.params import Params
from medrobust.training import train_model
from medrobust.utils import seed_everything

log = logging.getLogger(__name__)
EPS = 8 / 255


@dataclass
class Row:
    """One attack's throughput, ours and the reference's.

    Attributes:
        attack: the :data:`~medrobust.attacks.ATTACKS` name.
        ours: our attack's images per second.
        reference: torchattacks' images per second; None without a reference.
        note: the setting (steps, queries) or why there is no reference.
    """

    attack: str
    ours: float  # images / s
    reference: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """``ours / reference`` (above 1: ours is faster); None without a reference."""
        return None if self.reference is None else self.ours / self.reference


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(a: Callable[[], Any], b: Callable[[], Any] | None, repeats: int) -> tuple[float, float | None]:
    a()  # warm-up (allocator, threads)
    if b is not None:
        b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_time(a))
        if b is not None:
            tb.append(_time(b))
    return statistics.median(ta), (statistics.median(tb) if tb else None)


def bench_model(params: Params, dataset_dir: Path | None = None) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A standard small CNN on the built-in data, and the evaluation batch (val + test).

    Args:
        params: the configuration (``seed``, ``data``, and ``train``'s width, epochs, batch size, optimiser).
        dataset_dir: an ingested built-in dataset (made in a temporary folder when missing).

    Returns:
        (the model in eval mode, the val + test images, their labels).
    """
    dataset_dir = default_dataset(params, dataset_dir)
    seed_everything(params.seed)
    model = build_model(ModelSpec("small_cnn", len(params.data.classes), width=params.train.model.width,
                                  image_size=params.data.image_size))
    train_model(model, get_method("standard"), load_split(dataset_dir, "train"), None, epochs=params.train.epochs,
                batch_size=params.train.batch_size, optim=params.train.optim, seed=params.seed)
    model.eval()
    val, test = load_split(dataset_dir, "val"), load_split(dataset_dir, "test")
    return model, torch.cat([val.x, test.x]), torch.cat([val.y, test.y])


def _pairs(model: torch.nn.Module) -> list[tuple[str, dict[str, Any], Callable[[], Any] | None, str]]:
    try:
        import torchattacks as ta
    except ImportError:
        ta = None
    ref = (lambda f: f) if ta is not None else (lambda f: None)
    return [
        ("fgsm", {"eps": EPS}, ref(lambda: ta.FGSM(model, eps=EPS)), ""),
        ("bim", {"eps": EPS}, ref(lambda: ta.BIM(model, eps=EPS)), "10 steps"),
        ("pgd", {"eps": EPS, "steps": 10, "step_size": 2 / 255},
         ref(lambda: ta.PGD(model, eps=EPS, alpha=2 / 255, steps=10)), "10 steps, random start"),
        ("pgdl2", {"eps": 1.0}, ref(lambda: ta.PGDL2(model, eps=1.0)), "10 steps, random start"),
        ("mifgsm", {"eps": EPS}, ref(lambda: ta.MIFGSM(model, eps=EPS)), "10 steps"),
        ("cw", {"eps": float("inf"), "steps": 20}, ref(lambda: ta.CW(model, steps=20)), "20 steps"),
        ("apgd_ce", {"eps": EPS, "steps": 20}, ref(lambda: ta.APGD(model, eps=EPS, steps=20, loss="ce")),
         "20 steps, 1 restart"),
        ("apgd_margin", {"eps": EPS, "steps": 20}, None, "no reference (CW-margin APGD)"),
        ("square", {"eps": EPS, "n_queries": 100}, ref(lambda: ta.Square(model, eps=EPS, n_queries=100)),
         "100 queries"),
        ("autoattack", {"eps": EPS, "steps": 20, "n_queries": 100}, None,
         "binary task: torchattacks' AutoAttack needs >= 3 classes (DLR)"),
    ]


def bench_attacks(
    params: Params, repeats: int = 3, dataset_dir: Path | None = None, n_images: int = 64
) -> dict[str, Any]:
    """Time every attack against torchattacks on one model and batch; robust evaluation with and
    without early stopping.

    Args:
        params: the configuration (the built-in data, ``train`` epochs/batch/optimiser for the model).
        repeats: timed rounds per attack (alternating ours/theirs; the median is kept).
        dataset_dir: an ingested built-in dataset (made in a temporary folder when missing).
        n_images: the batch, the same for every attack.

    Returns:
        The numbers (also logged as a table, see :func:`format_report`).
    """
    model, x, y = bench_model(params, dataset_dir)
    x, y = x[:n_images], y[:n_images]
    n = len(x)
    clean = accuracy(model, x, y)
    rows: list[Row] = []
    for name, kw, reference, note in _pairs(model):
        ours = get_attack(name, model, **kw)
        theirs = reference() if reference is not None else None
        t_ours, t_ref = _interleaved(lambda: ours(x, y), (lambda: theirs(x, y)) if theirs else None, repeats)
        rows.append(Row(name, n / t_ours, (n / t_ref) if t_ref else None, note))
    # early stopping: robust accuracy with and without it, timed alternately
    early: list[dict[str, Any]] = []
    for name, kw in (("pgd", {"eps": EPS, "steps": 20, "seed": 0}),
                     ("autoattack", {"eps": EPS, "steps": 20, "n_queries": 100, "seed": 0})):
        res: dict[bool, Any] = {}

        def run(flag: bool, name=name, kw=kw) -> None:
            res[flag] = evaluate_attack(model, get_attack(name, model, **kw), x, y, early_stop=flag)

        t_fast, t_slow = _interleaved(lambda: run(True), lambda: run(False), repeats)
        early.append({"attack": name, "seconds_early_stop": t_fast, "seconds_all_points": t_slow,
                      "speedup": t_slow / t_fast, "accuracy_early_stop": res[True].accuracy,
                      "accuracy_all_points": res[False].accuracy,
                      "identical": bool(torch.equal(res[True].robust, res[False].robust))})
    report = {"n_images": n, "clean_accuracy": clean, "threads": torch.get_num_threads(), "repeats": repeats,
              "throughput": [r.__dict__ | {"ratio": r.ratio} for r in rows], "early_stop": early}
    log.info("\n%s", format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table.

    Args:
        report: :func:`bench_attacks`'s report.

    Returns:
        A throughput table and an early-stopping table.
    """
    lines = [f"batch: {report['n_images']} images, clean accuracy {report['clean_accuracy']:.3f}, "
             f"{report['threads']} threads, median of {report['repeats']}",
             "", f"{'attack':<12} {'ours img/s':>11} {'torchattacks':>13} {'ratio':>7}  note",
             "-" * 72]
    for r in report["throughput"]:
        ref = f"{r['reference']:13.1f}" if r["reference"] else f"{'-':>13}"
        ratio = f"{r['ratio']:7.2f}" if r["ratio"] else f"{'-':>7}"
        lines.append(f"{r['attack']:<12} {r['ours']:11.1f} {ref} {ratio}  {r['note']}")
    lines += ["", f"{'robust eval':<12} {'early stop':>11} {'all points':>11} {'speedup':>8} "
                  f"{'acc (early)':>12} {'acc (all)':>10} identical", "-" * 80]
    for e in report["early_stop"]:
        lines.append(f"{e['attack']:<12} {e['seconds_early_stop']:10.2f}s {e['seconds_all_points']:10.2f}s "
                     f"{e['speedup']:7.2f}x {e['accuracy_early_stop']:12.3f} {e['accuracy_all_points']:10.3f} "
                     f"{e['identical']}")
    return "\n".join(lines)


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the command and the table.

    Args:
        report: :func:`bench_attacks`'s report.
        command: the command line that reproduces it.

    Returns:
        The markdown page.
    """
    return "\n".join(["# Attack throughput", "", f"Command: `{command}`", "", "```", format_report(report), "```", ""])


__all__ = ["bench_attacks", "bench_model", "format_report", "to_markdown"]
