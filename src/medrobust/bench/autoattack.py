"""``medrobust bench autoattack``: our AutoAttack-style ensemble against torchattacks 3.5.1's
``AutoAttack(version="standard")``, on a real 10-class dataset.

The data are scikit-learn's handwritten digits (1,797 images of 8×8 pixels, shipped inside the
package: nothing is downloaded), scaled to [0, 1]. A seeded split keeps ``n_images`` of them for
the attacks and trains the project's ``small_cnn`` (standard training, Adam) on the rest.

For each ε the two ensembles are timed alternately, ``repeats`` rounds each, and the median wall
time of each is kept, so machine noise hits both alike: the number to read is the ratio. Both are
seeded, so every round gives the same adversarial points; the report has the robust accuracy of
each with its Wilson interval, how many points each fools that the other does not, and what every
member of ours adds.

torchattacks is a test-only dependency (``make test`` installs it); the benchmark needs it.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
from torch import nn

from medrobust.attacks import get_attack
from medrobust.evaluation.stats import proportion
from medrobust.models import ModelSpec, build_model
from medrobust.utils import seed_everything

log = logging.getLogger(__name__)
EPSILONS = (0.075, 0.1)


def digits(n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits in [0, 1], split by a seeded permutation.

    Args:
        n_test: images held out for the attacks (the rest train the model).
        seed: the permutation's seed.

    Returns:
        (train images ``(N, 1, 8, 8)``, train labels, test images, test labels).

    Raises:
        ValueError: ``n_test`` leaves fewer than 100 training images.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)  # pixel values are 0..16
    y = torch.tensor(data.target, dtype=torch.long)
    if not 0 < n_test <= len(x) - 100:
        raise ValueError(f"n_images must be in 1..{len(x) - 100} (the digits have {len(x)} images), got {n_test}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_cnn(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 30, width: int = 16) -> nn.Module:
    """The project's ``small_cnn`` trained on ``(x, y)`` with the cross-entropy (Adam, batch 64).

    Returns:
        The model in eval mode, its parameters frozen.
    """
    seed_everything(seed)
    model = build_model(ModelSpec("small_cnn", 10, in_channels=1, width=width, image_size=8, mean=0.3, std=0.4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 1, 64):
            batch = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError as exc:
        raise RuntimeError("the AutoAttack benchmark compares against torchattacks 3.5.1, which is not installed; "
                           "`make setup-test` installs it") from exc
    return torchattacks


def _ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
          kwargs: dict[str, Any]) -> tuple[torch.Tensor, list[dict[str, float]]]:
    attack = get_attack("autoattack", model, eps=eps, seed=seed, **kwargs)
    _, fooled = attack.run(x, y)
    with torch.no_grad():
        robust = (model(x).argmax(1) == y) & ~fooled
    return robust, attack.last_log


def _theirs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    ta = _torchattacks()
    adv = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)(x, y)
    with torch.no_grad():
        return model(adv).argmax(1) == y


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_autoattack(seed: int = 0, n_images: int = 500, epsilons: tuple[float, ...] = EPSILONS, repeats: int = 3,
                     epochs: int = 30, ours_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time and compare the two ensembles at each ε (see the module docstring).

    Args:
        seed: the split's, the training's and both attacks' seed.
        n_images: test images attacked (all of them; the misclassified count as not robust).
        epsilons: the L∞ budgets, fractions of the [0, 1] range.
        repeats: alternating timed rounds per ε (the median of each side is kept).
        epochs: training epochs of the CNN.
        ours_kwargs: extra arguments of ``get_attack("autoattack")`` (the defaults are the ones compared).

    Returns:
        The report: per ε both times, their ratio, both robust accuracies with Wilson intervals, the
        points fooled by one ensemble only, and our members' robust accuracy after each.
    """
    _torchattacks()
    x_train, y_train, x, y = digits(n_images, seed)
    model = train_cnn(x_train, y_train, seed, epochs)
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum())
    rows = []
    for eps in epsilons:
        t_ours, t_theirs, results = [], [], {}
        for _ in range(repeats):
            dt, results["ours"] = _timed(lambda eps=eps: _ours(model, x, y, eps, seed, ours_kwargs or {}))
            t_ours.append(dt)
            dt, results["theirs"] = _timed(lambda eps=eps: _theirs(model, x, y, eps, seed))
            t_theirs.append(dt)
            log.info("eps %g: ours %.1f s, torchattacks %.1f s", eps, t_ours[-1], t_theirs[-1])
        (robust_ours, members), robust_theirs = results["ours"], results["theirs"]
        rows.append({
            "eps": eps, "seconds_ours": statistics.median(t_ours), "seconds_torchattacks": statistics.median(t_theirs),
            "all_seconds_ours": t_ours, "all_seconds_torchattacks": t_theirs,
            "speedup": statistics.median(t_theirs) / statistics.median(t_ours),
            "robust_ours": proportion(int(robust_ours.sum()), n_images),
            "robust_torchattacks": proportion(int(robust_theirs.sum()), n_images),
            "fooled_only_by_ours": int((robust_theirs & ~robust_ours).sum()),
            "fooled_only_by_torchattacks": int((robust_ours & ~robust_theirs).sum()),
            "members": members,
        })
    report = {"dataset": "scikit-learn digits (8×8, 10 classes)", "n_images": n_images, "n_train": len(x_train),
              "model": "small_cnn width 16", "epochs": epochs, "seed": seed,
              "clean_accuracy": proportion(clean, n_images), "threads": torch.get_num_threads(), "repeats": repeats,
              "ours": "get_attack('autoattack', eps=ε, seed=seed)" + (f" with {ours_kwargs}" if ours_kwargs else ""),
              "torchattacks": "torchattacks 3.5.1 AutoAttack(norm='Linf', eps=ε, version='standard', n_classes=10)",
              "rows": rows}
    log.info("\n%s", format_report(report))
    return report


def _pct(e: dict[str, Any]) -> str:
    return f"{100 * e['value']:.1f}% [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table (robust accuracy with its 95% Wilson interval)."""
    lines = [f"{report['n_images']} test images, clean accuracy {_pct(report['clean_accuracy'])}; "
             f"{report['threads']} threads, median of {report['repeats']} alternating rounds",
             "", f"{'eps':>6} {'ours s':>8} {'ta s':>8} {'speedup':>8}  {'robust ours':<22} {'robust torchattacks':<22}"
                 f" {'only ours':>9} {'only ta':>8}", "-" * 100]
    for r in report["rows"]:
        lines.append(f"{r['eps']:6.3f} {r['seconds_ours']:8.1f} {r['seconds_torchattacks']:8.1f} "
                     f"{r['speedup']:7.2f}x  {_pct(r['robust_ours']):<22} {_pct(r['robust_torchattacks']):<22} "
                     f"{r['fooled_only_by_ours']:9d} {r['fooled_only_by_torchattacks']:8d}")
    lines += ["", "robust accuracy after each of our members:"]
    for r in report["rows"]:
        lines.append(f"  eps {r['eps']:g}: " + ", ".join(f"{m['attack']} {100 * m['robust_accuracy']:.1f}% ({m['seconds']:.1f} s)"
                                                         for m in r["members"]))
    return "\n".join(lines)


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: what is compared, the command and the table."""
    return "\n".join([
        "# AutoAttack: ours against torchattacks", "",
        f"Command: `{command}`", "",
        f"- Data: {report['dataset']}; {report['n_train']} images train the model ({report['model']}, "
        f"{report['epochs']} epochs), {report['n_images']} are attacked.",
        f"- Ours: `{report['ours']}`.", f"- Reference: `{report['torchattacks']}`.",
        "- What runs, each member only on the points still robust: ours APGD-CE (100 steps) → APGD-T (targeted DLR, "
        "9 targets, 100 steps) → Square (1,000 queries); torchattacks' standard APGD-CE and APGD-T at its default "
        "10 steps, FAB-T (9 targets), Square (5,000 queries).",
        "- *only ours*: points our ensemble fools and torchattacks' does not; *only ta*: the reverse.", "",
        "```", format_report(report), "```", ""])


__all__ = ["EPSILONS", "bench_autoattack", "digits", "format_report", "to_markdown", "train_cnn"]
