"""``evaluate.certify``: randomized-smoothing certificates of the test split, per σ, with intervals.

For each σ of ``sigmas`` CERTIFY (:func:`medrobust.certify.certify_all`) runs on ``max_images`` test
images (a seeded sample; 0: all). The *certified accuracy at radius r* is the share of those images
whose certified class is the true one with a radius of at least ``r`` (Cohen et al., Sec. 4); each
carries its Wilson interval over the images and the abstention rate is reported beside it. Radii are
L2 norms in [0, 1] pixel units over the whole image; for orientation each has its L∞ equivalent
in 1/255 (an L∞ ball of radius ``r/√d`` lies inside the L2 ball of radius ``r``, ``d`` the number
of pixel values). The soundness check (:func:`medrobust.certify.soundness_check`) attacks every
point certified correctly within its radius; a violation fails the ``certificate_soundness`` gate.

``metrics.json`` gets ``certified``: ``{"sigma": {σ: {"accuracy": {r: figure}, "abstain": figure,
"mean_radius"}}, "gate": {"sigma", "radius", "accuracy": figure}, "soundness": {...}, ...}``; a gate
reads ``certified.gate.accuracy`` (``register.gates``: ``{name: min_certified_accuracy, metric:
certified.gate.accuracy, lower_bound: ...}``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from pydantic import Field, model_validator  # noqa: E402

from medrobust.certify import certify_all, soundness_check  # noqa: E402
from medrobust.config import Seq, StrictModel, field_error  # noqa: E402
from medrobust.evaluation.stats import proportion  # noqa: E402

log = logging.getLogger(__name__)


def _label(value: float) -> str:
    return f"{value:g}"


class SoundnessConfig(StrictModel):
    """``evaluate.certify.soundness``: attack the smoothed classifier inside each certified radius."""

    enabled: bool = True
    steps: int = Field(10, ge=1, le=1000, description="L2 PGD steps on the smoothed classifier")
    samples: int = Field(16, ge=1, le=10_000, description="noise draws per point and step")
    max_points: int = Field(32, ge=0, description="points checked (those certified correctly); 0: all")


class CertifyConfig(StrictModel):
    """``evaluate.certify``: randomized-smoothing certificates (Cohen et al. 2019) and their gate figure."""

    enabled: bool = True
    sigmas: Seq[float] = Field((0.25,), min_length=1,
                               description="noise levels σ, in [0, 1] pixel units (one certificate run each)")
    n0: int = Field(100, ge=1, le=10_000_000, description="noisy samples that select the class")
    n: int = Field(1000, ge=1, le=10_000_000, description="noisy samples that bound its probability "
                                                           "(the paper: 100,000; thorough: 10,000)")
    alpha: float = Field(0.001, gt=0.0, lt=1.0, description="each certificate fails with probability at most α")
    max_images: int = Field(48, ge=0, description="test images certified (a seeded sample); 0: all")
    radii: Seq[float] = Field((0.0, 0.25, 0.5, 0.75, 1.0), min_length=1,
                              description="L2 radii (pixel units) the certified accuracy is reported at")
    batch_size: int = Field(1000, ge=1, le=1_000_000, description="noisy copies per forward pass")
    gate_sigma: float | None = Field(None, description="σ of the gate figure certified.gate.accuracy; "
                                                       "null: the first of sigmas")
    gate_radius: float = Field(0.25, ge=0.0, le=100.0, description="L2 radius of the gate figure")
    thorough: bool = Field(False, description="a final run: n 10,000, every test image, every point checked")
    soundness: SoundnessConfig = SoundnessConfig()

    @model_validator(mode="after")
    def _check(self) -> CertifyConfig:
        if any(not 0 < s <= 4 for s in self.sigmas):
            raise field_error("sigmas", "each σ must be in (0, 4] (pixel units of images in [0, 1])")
        if any(not 0 <= r <= 100 for r in self.radii):
            raise field_error("radii", "each radius must be in [0, 100]")
        if self.gate_sigma is not None and self.gate_sigma not in self.sigmas:
            raise field_error("gate_sigma", f"must be one of sigmas {list(self.sigmas)}, got {self.gate_sigma}")
        return self

    def effective(self) -> CertifyConfig:
        """The settings a run uses: ``thorough`` raises ``n``, ``max_images`` and the points checked."""
        if not self.thorough:
            return self
        return self.model_copy(update={"n": max(self.n, 10_000), "max_images": 0,
                                       "soundness": self.soundness.model_copy(update={"max_points": 0})})


def sample_indices(n_total: int, max_images: int, seed: int) -> torch.Tensor:
    """The test images certified: all, or a seeded sample of ``max_images`` in ascending order."""
    if not max_images or max_images >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


def certified_accuracy(cfg: CertifyConfig, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       seed: int, level: float = 0.95) -> dict[str, Any]:
    """``metrics.json``'s ``certified`` section (see the module docstring).

    Args:
        cfg: ``evaluate.certify``.
        model: the trained classifier (on the device the images are moved to).
        x: the test images in [0, 1].
        y: their classes.
        seed: ``params.seed`` (the sample, the noise and the attack).
        level: the intervals' confidence level.

    Returns:
        The section, with ``seconds``.
    """
    cfg = cfg.effective()
    start = time.perf_counter()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    idx = sample_indices(len(x), cfg.max_images, seed)
    xs, ys = x[idx].to(device), y[idx].to(device)
    d = int(xs[0].numel()) if len(xs) else 1
    out: dict[str, Any] = {"n_images": int(len(idx)), "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha,
                           "image_values": d, "radii": list(cfg.radii),
                           "linf_equivalent_255": {_label(r): round(255 * r / math.sqrt(d), 3) for r in cfg.radii},
                           "sigma": {}}
    gate_sigma = cfg.gate_sigma if cfg.gate_sigma is not None else cfg.sigmas[0]
    soundness = []
    for k, sigma in enumerate(cfg.sigmas):
        cert = certify_all(model, xs, sigma, cfg.n0, cfg.n, cfg.alpha, cfg.batch_size, seed + 1000 * k)
        correct = cert.prediction == ys.cpu()
        entry = {"accuracy": {_label(r): proportion(int((correct & (cert.radius >= r)).sum()), len(idx), level)
                              for r in cfg.radii},
                 "abstain": proportion(int((cert.prediction == -1).sum()), len(idx), level),
                 "mean_radius": float(torch.where(correct, cert.radius, torch.zeros_like(cert.radius)).mean())
                 if len(idx) else None}
        entry["gate_radius_accuracy"] = proportion(int((correct & (cert.radius >= cfg.gate_radius)).sum()),
                                                   len(idx), level)
        if cfg.soundness.enabled:
            check = soundness_check(model, xs, ys, cert, cfg.n, cfg.alpha, cfg.soundness.steps, cfg.soundness.samples,
                                    cfg.soundness.max_points, cfg.batch_size, seed + 1000 * k + 7)
            entry["soundness"] = check
            soundness.append((sigma, check))
        out["sigma"][_label(sigma)] = entry
        log.info("certify: σ=%g on %d images, certified accuracy at r=%g: %.3f, abstained %.3f", sigma, len(idx),
                 cfg.gate_radius, entry["gate_radius_accuracy"]["value"] or 0.0, entry["abstain"]["value"] or 0.0)
    out["gate"] = {"sigma": gate_sigma, "radius": cfg.gate_radius,
                   "accuracy": out["sigma"][_label(gate_sigma)]["gate_radius_accuracy"]}
    if cfg.soundness.enabled:
        failed = [(s, c) for s, c in soundness if not c["passed"]]
        out["soundness"] = {"passed": not failed, "checked": sum(c["checked"] for _, c in soundness),
                            "violations": sum(c["violations"] for _, c in soundness),
                            "message": "; ".join(f"σ={s:g}: {c['message']}" for s, c in soundness)}
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def certified_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``certified.csv`` (a DVC plot): certified accuracy and its CI per (σ, radius)."""
    section = metrics.get("certified") or {}
    rows = []
    for sigma, entry in section.get("sigma", {}).items():
        for radius, fig in entry["accuracy"].items():
            rows.append({"series": f"sigma={sigma}", "sigma": float(sigma), "radius": float(radius),
                         "linf_255": section["linf_equivalent_255"].get(radius), "certified_accuracy": fig["value"],
                         "ci_low": fig["ci"][0], "ci_high": fig["ci"][1]})
    return rows


def plot_certified(metrics: dict[str, Any], path: str | Path) -> None:
    """Certified accuracy against the L2 radius per σ, with 95% bands; the gate figure as a star."""
    section = metrics["certified"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for sigma, entry in section["sigma"].items():
        pts = sorted((float(r), f) for r, f in entry["accuracy"].items())
        xs, figs = [r for r, _ in pts], [f for _, f in pts]
        (line,) = ax.plot(xs, [f["value"] for f in figs], marker="o", label=f"σ = {sigma}")
        ax.fill_between(xs, [f["ci"][0] for f in figs], [f["ci"][1] for f in figs], color=line.get_color(),
                        alpha=0.15, linewidth=0)
    gate = section["gate"]
    if gate["accuracy"]["value"] is not None:
        ax.scatter([gate["radius"]], [gate["accuracy"]["value"]], marker="*", s=160, c="red", zorder=5,
                   label="gate figure")
    ax.set(xlabel="L2 radius (pixel units of [0, 1] images)", ylabel="certified accuracy (95% CI)", ylim=(0, 1.02),
           title=f"randomized smoothing: {section['n_images']} images, n = {section['n']}, α = {section['alpha']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["CertifyConfig", "SoundnessConfig", "certified_accuracy", "certified_rows", "plot_certified",
           "sample_indices"]
