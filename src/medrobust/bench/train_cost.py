"""``medrobust bench train``: the cost of one training epoch of every method, as a ratio to standard training.

One run, one machine state: every method trains the same batches (``n_batches`` × ``train.batch_size``
images of the configured size) from the same initial weights, the methods are timed in interleaved
rounds (``repeats`` rounds, the median kept), and each time is divided by standard training's.
Images are seeded uniform noise with random labels: the cost of a step does not depend on the pixel
values (no method stops early during training), so no dataset is needed.

PGD-k adversarial training does k forward/backward passes for the attack plus one for the update,
so its epoch should cost about (k + 1)× standard training; the bench checks ``ratio ≤ 1.05·(k + 1)``
for PGD-AT at several k (the issue's training-cost target).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import pandas as pd
import torch

from medrobust.bench.methods import check_methods
from medrobust.data.shards import ArraySplit
from medrobust.params import Params
from medrobust.training import build_method, make_optimizer
from medrobust.utils import seed_everything

log = logging.getLogger(__name__)

PGD_STEPS = (1, 3, 7, 10)  # the PGD-AT variants checked against (k + 1)× standard
BOUND_SLACK = 1.05


def _split(params: Params, n: int, modality: str = "MG") -> ArraySplit:
    g = torch.Generator().manual_seed(params.seed)
    size = params.data.image_size
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.randint(0, len(params.data.classes), (n,), generator=g)
    y[: len(params.data.classes)] = torch.arange(len(params.data.classes))  # every class present
    return ArraySplit(x, y, pd.DataFrame({"modality": [modality] * n}))


def _variants(params: Params, methods: list[str]) -> list[tuple[str, str, Params, int | None]]:
    """(label, method, params, k) per timed configuration; PGD-AT once per k in :data:`PGD_STEPS`."""
    out: list[tuple[str, str, Params, int | None]] = []
    for method in methods:
        if method == "pgd_at":
            base = dict(params.train.methods.get("pgd_at") or {})
            for k in PGD_STEPS:
                p = params.updated({"train": {"methods": {"pgd_at": {**base, "steps": k, "warmup_epochs": 0}}}})
                out.append((f"pgd_at (k={k})", method, p, k))
        else:
            out.append((method, method, params, None))
    return out


def bench_train(params: Params, methods: list[str] | None = None, n_batches: int = 6, repeats: int = 3,
                threads: int | None = None) -> dict[str, Any]:
    """Time one epoch of ``n_batches`` batches per method against standard training, interleaved.

    Args:
        params: the configuration (``train``: backbone, batch size, optimiser, each method's settings).
        methods: the methods (default: every registered one); standard training is always added.
        n_batches: batches per timed epoch.
        repeats: timed rounds (the median is kept).
        threads: torch threads (None: torch's default).

    Returns:
        Rows with seconds per epoch and the ratio to standard training (PGD-AT with its bound).

    Raises:
        KeyError: an unknown method.
    """
    if threads:
        torch.set_num_threads(threads)
    methods = check_methods(methods)
    if "standard" not in methods:
        methods = ["standard", *methods]
    bs = params.train.batch_size
    data = _split(params, n_batches * bs)
    runners = {}
    for label, method, p, k in _variants(params, methods):
        seed_everything(params.seed)
        model, trainer, _ = build_method(p.train, method, data, len(p.data.classes), p.data.image_size, seed=p.seed)
        opt = make_optimizer(model, params.train.optim)
        trainer.start_epoch(max(params.train.epochs - 1, 0), params.train.epochs)  # past any warm-up

        def epoch(model=model, trainer=trainer, opt=opt) -> None:
            model.train()
            for start in range(0, len(data), bs):
                loss, _ = trainer.loss(model, data.x[start:start + bs], data.y[start:start + bs])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        runners[label] = (epoch, k)
    for fn, _ in runners.values():  # warm-up round
        fn()
    times: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(repeats):
        for label, (fn, _) in runners.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times["standard"])
    rows = []
    for label, (_, k) in runners.items():
        t = statistics.median(times[label])
        row: dict[str, Any] = {"method": label, "seconds_per_epoch": t, "ratio": t / base}
        if k is not None:
            row["bound"] = BOUND_SLACK * (k + 1)
            row["within_bound"] = bool(t / base <= row["bound"])
        rows.append(row)
    report = {"batches": n_batches, "batch_size": bs, "image_size": params.data.image_size,
              "backbone": params.train.model.backbone, "repeats": repeats, "threads": torch.get_num_threads(),
              "rows": rows}
    lines = [f"training cost per epoch ({n_batches} batches of {bs}, {params.data.image_size}px, "
             f"{params.train.model.backbone}, median of {repeats}, {torch.get_num_threads()} threads)",
             f"{'method':<22}{'s/epoch':>9}{'× standard':>12}  bound"]
    for r in rows:
        bound = (f"≤ {r['bound']:.2f} {'ok' if r['within_bound'] else 'EXCEEDED'}" if "bound" in r else "")
        lines.append(f"{r['method']:<22}{r['seconds_per_epoch']:>9.3f}{r['ratio']:>12.2f}  {bound}")
    log.info("\n%s", "\n".join(lines))
    return report


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the setting, then one table row per method.

    Args:
        report: :func:`bench_train`'s report.
        command: the command line that reproduces it.

    Returns:
        The markdown page.
    """
    lines = [
        "# Training cost per method",
        "",
        f"Command: `{command}`",
        "",
        f"One epoch = {report['batches']} batches of {report['batch_size']} images, {report['image_size']}×"
        f"{report['image_size']}, backbone `{report['backbone']}`, {report['threads']} torch threads; methods timed in "
        f"interleaved rounds, median of {report['repeats']}; ratio = epoch time / standard training's epoch time "
        "in the same run. PGD-k adversarial training is bounded by 1.05·(k + 1).",
        "",
        "| method | s / epoch | × standard | bound |",
        "|---|---:|---:|---|",
    ]
    for r in report["rows"]:
        bound = f"≤ {r['bound']:.2f} ({'ok' if r['within_bound'] else 'exceeded'})" if "bound" in r else ""
        lines.append(f"| {r['method']} | {r['seconds_per_epoch']:.3f} | {r['ratio']:.2f} | {bound} |")
    return "\n".join(lines) + "\n"


__all__ = ["BOUND_SLACK", "PGD_STEPS", "bench_train", "to_markdown"]
