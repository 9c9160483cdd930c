"""``medrobust bench certify``: randomized-smoothing certificates of noise-trained and other models, and
the certifier's speed, on the default data.

**Certified accuracy.** Each method of ``methods`` (default: standard, PGD-AT, ``gaussian_noise``,
Cohen et al.'s noise training at σ, and ``smooth_adv``, Salman et al.'s adversarial training of the
smoothed classifier at σ) trains with the same budget — the backbone, epochs, batch size
and optimiser of ``params.yaml``'s ``train`` — on the built-in synthetic dataset; CERTIFY
(:func:`medrobust.certify.certify_all`) then runs on every test image at σ with ``n0``, ``n`` and
α. The table has the certified accuracy at each L2 radius with its 95% Wilson interval over the
test images, and the abstention rate.

**Speed.** On ``speed_images`` test images, interleaved rounds (median of ``repeats``) time three
ways of classifying the same number of noisy samples with the noise-trained model:

* ours: :func:`~medrobust.certify.certify_all` (``n0 + n`` samples per image, batched across images,
  on the fast copy of the model);
* a plain batched forward pass of the model on as many (pre-made) images, ``batch_size`` per pass:
  the ceiling of any sampler that does not change the model (goal: ours ≥ 0.9× its samples/s);
* ART 1.20.1's ``PyTorchRandomizedSmoothing.certify`` (``sample_size = n0``, the same ``n`` and batch
  size; goal: ours ≥ 5×). ART is a test-only dependency (``make setup-test`` installs it).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.bench.data import default_dataset
from medrobust.certify import certify_all
from medrobust.data.shards import load_split
from medrobust.evaluation.stats import proportion
from medrobust.params import Params
from medrobust.training import build_method, train_model
from medrobust.utils import seed_everything, setup_logging

log = logging.getLogger(__name__)
METHODS = ("standard", "pgd_at", "gaussian_noise", "smooth_adv")
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def _train(params: Params, method: str, dataset: Path, sigma: float, epochs: int) -> tuple[torch.nn.Module, float]:
    cfg = params.train
    if method in ("gaussian_noise", "smooth_adv"):  # the noise it trains with is the noise it is certified at
        params = params.updated({"train": {"methods": {method: {"sigma": sigma}}}})
        cfg = params.train
    train, val = load_split(dataset, "train"), load_split(dataset, "val")
    seed_everything(params.seed)
    start = time.perf_counter()
    model, trainer, _ = build_method(cfg, method, train, len(params.data.classes), params.data.image_size,
                                     seed=params.seed)
    train_model(model, trainer, train, val, epochs=epochs, batch_size=cfg.batch_size, optim=cfg.optim,
                seed=params.seed, hflip=cfg.hflip, clean_warmup_epochs=cfg.clean_warmup_epochs, desc=method)
    return model.eval(), time.perf_counter() - start


def _art_certify(model: torch.nn.Module, x: torch.Tensor, n_classes: int, sigma: float, n0: int, n: int,
                 alpha: float, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    except ImportError as exc:
        raise RuntimeError("the certify benchmark compares against ART 1.20.1 (adversarial-robustness-toolbox), "
                           "which is not installed; `make setup-test` installs it") from exc
    np.random.seed(0)
    art = PyTorchRandomizedSmoothing(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                     nb_classes=n_classes, clip_values=None, sample_size=n0, scale=sigma, alpha=alpha,
                                     device_type="cpu")
    return art.certify(x.numpy(), n=n, batch_size=batch_size)


def _plain_forward(model: torch.nn.Module, x: torch.Tensor, total: int, batch_size: int) -> None:
    batch = x.repeat((batch_size + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:batch_size]
    with torch.no_grad():
        for start in range(0, total, batch_size):
            model(batch[:min(batch_size, total - start)])


def speed(model: torch.nn.Module, x: torch.Tensor, n_classes: int, sigma: float, n0: int, n: int, alpha: float,
          batch_size: int, repeats: int) -> dict[str, Any]:
    """Noisy samples per second: ours, a plain batched forward pass and ART (see the module docstring)."""
    total = len(x) * (n0 + n)
    times: dict[str, list[float]] = {"ours": [], "forward": [], "art": []}
    runs = {"ours": lambda: certify_all(model, x, sigma, n0, n, alpha, batch_size, seed=0),
            "forward": lambda: _plain_forward(model, x, total, batch_size),
            "art": lambda: _art_certify(model, x, n_classes, sigma, n0, n, alpha, batch_size)}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: total / statistics.median(v) for k, v in times.items()}
    return {"images": len(x), "samples": total, "batch_size": batch_size, "seconds": times,
            "samples_per_second": rate, "vs_forward": rate["ours"] / rate["forward"],
            "vs_art": rate["ours"] / rate["art"]}


def bench_certify(params: Params, dataset_dir: Path | None = None, methods: tuple[str, ...] = METHODS,
                  sigma: float = 0.25, n0: int = 100, n: int = 2000, alpha: float = 0.001,
                  radii: tuple[float, ...] = RADII, epochs: int | None = None, speed_images: int = 8,
                  batch_size: int = 1000, repeats: int = 3) -> dict[str, Any]:
    """Train, certify and time (see the module docstring).

    Args:
        params: the configuration (``train``, ``seed``, ``data``).
        dataset_dir: an ingested built-in dataset (synthesised and ingested when None or empty).
        methods: training methods compared.
        sigma: the noise level (training of ``gaussian_noise`` and ``smooth_adv``, and certification).
        n0: samples that select the class.
        n: samples that bound its probability.
        alpha: the certificates' failure probability.
        radii: L2 radii of the table.
        epochs: epochs per method (None: ``train.epochs``).
        speed_images: test images of the speed rounds.
        batch_size: noisy copies per forward pass (all three ways).
        repeats: interleaved speed rounds (median kept).

    Returns:
        The report: per method the certified accuracy at each radius (Wilson CIs), abstentions and the
        training time; and the speed section.
    """
    setup_logging()
    dataset = default_dataset(params, dataset_dir)
    test = load_split(dataset, "test")
    epochs = epochs or params.train.epochs
    rows, models = [], {}
    for method in methods:
        model, train_s = _train(params, method, dataset, sigma, epochs)
        models[method] = model
        cert = certify_all(model, test.x, sigma, n0, n, alpha, batch_size, seed=params.seed)
        correct = cert.prediction == test.y
        with torch.no_grad():
            clean = int((model(test.x).argmax(1) == test.y).sum())
        rows.append({"method": method, "train_seconds": round(train_s, 1),
                     "clean_accuracy": proportion(clean, len(test.y)),
                     "certified": {f"{r:g}": proportion(int((correct & (cert.radius >= r)).sum()), len(test.y))
                                   for r in radii},
                     "abstain": proportion(int((cert.prediction == -1).sum()), len(test.y))})
        log.info("%s: certified accuracy at r=0.5 %.3f", method, rows[-1]["certified"].get("0.5", {}).get("value", 0))
    timing_model = models.get("gaussian_noise") or next(iter(models.values()))
    fast = speed(timing_model, test.x[:speed_images], len(params.data.classes), sigma, n0, n, alpha, batch_size,
                 repeats)
    return {"dataset": f"built-in synthetic ({len(test.y)} test images, {params.data.image_size}×"
                       f"{params.data.image_size})", "backbone": params.train.model.backbone, "epochs": epochs,
            "seed": params.seed, "sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "radii": list(radii),
            "threads": torch.get_num_threads(), "rows": rows, "speed": fast}


def _pct(e: dict[str, Any]) -> str:
    if e["value"] is None:
        return "n/a"
    return f"{100 * e['value']:.1f}% [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the certified-accuracy table and the speed ratios, with the command."""
    radii = [f"{r:g}" for r in report["radii"]]
    lines = ["# Randomized smoothing: certified accuracy and the certifier's speed", "",
             f"Command: `{command}`", "",
             f"- Data: {report['dataset']}; backbone {report['backbone']}, {report['epochs']} epochs per method, "
             f"seed {report['seed']}.",
             f"- CERTIFY (Cohen et al. 2019) on every test image: σ = {report['sigma']}, n0 = {report['n0']}, "
             f"n = {report['n']}, α = {report['alpha']}; radii are L2 norms in [0, 1] pixel units. Intervals: "
             "95% Wilson over the test images.", "",
             "| method | train s | clean accuracy | " + " | ".join(f"certified r = {r}" for r in radii)
             + " | abstained |", "|" + "---|" * (4 + len(radii))]
    for row in report["rows"]:
        lines.append(f"| {row['method']} | {row['train_seconds']:.0f} | {_pct(row['clean_accuracy'])} | "
                     + " | ".join(_pct(row["certified"][r]) for r in radii) + f" | {_pct(row['abstain'])} |")
    s = report["speed"]
    rate = s["samples_per_second"]
    lines += ["", f"Speed: {s['images']} test images × (n0 + n) = {s['samples']} noisy samples, batch {s['batch_size']}, "
                  f"median of {len(s['seconds']['ours'])} interleaved rounds, {report['threads']} threads.", "",
              "Ours classifies on the model's fast copy (batch norm folded into the convolutions, channels-last; "
              "the same function), which is why it can outrun the plain forward pass; ART and the plain pass run "
              "the model as it is.", "",
              "| | samples/s | ours vs it |", "|---|---|---|",
              f"| ours (`certify_all`) | {rate['ours']:,.0f} | |",
              f"| plain batched forward of the model | {rate['forward']:,.0f} | {s['vs_forward']:.2f}× |",
              f"| ART 1.20.1 `PyTorchRandomizedSmoothing.certify` | {rate['art']:,.0f} | {s['vs_art']:.2f}× |", ""]
    return "\n".join(lines)


__all__ = ["METHODS", "RADII", "bench_certify", "speed", "to_markdown"]
