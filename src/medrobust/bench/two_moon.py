"""``medrobust bench two-moon``: the synthetic experiment of "Adversarially Robust Feature Learning for
Breast Cancer Diagnosis" (Hao et al., the ARFL paper; Sections 4 and 5.1, Table 1), reproduced with
this library's training loop, training methods and attacks.

Setup as in the paper: scikit-learn ``make_moons`` with noise 0.2, 10,000 training and 1,000 test
points; a 2-10-10-1 MLP (``ModelSpec("mlp", 2, in_channels=2, width=10, head="binary")``: the
binary head makes cross-entropy equal binary cross-entropy); FGSM with ε₁ = 0.05 for training and
ε₂ = 0.2 for the attack; λ = 0.5 for ARFL; five seeds; test accuracy clean and under FGSM ε₂.

Settings (r = share of clean data, ARFL Eq. 4/5):

====  ==============================  ===========================================================
A     standard training (r = 1)       :class:`~medrobust.defenses.standard.Standard`
B     standard + ARFL                 :class:`~medrobust.defenses.arfl.ARFL` r = 1, λ = 0.5
C     adversarial training (r = 0)    :class:`~medrobust.defenses.dual_at.DualAT` r = 0, FGSM ε₁
D     adversarial training + ARFL     ARFL r = 0, λ = 0.5, FGSM ε₁
E     dual adversarial training       DualAT r = 0.5, FGSM ε₁
F     dual adversarial training+ARFL  ARFL r = 0.5, λ = 0.5, FGSM ε₁
G     TRADES                          :class:`~medrobust.defenses.trades.TRADES`, budget ε₁
H     MIRST                           not implemented in medrobust (reported as such)
====  ==============================  ===========================================================

DualAT's inner maximisation is PGD; with one step of size ε₁ from x and no random start it *is*
FGSM (``x + ε₁·sign(∇)``, up to float rounding of the projection), which is how C and E use it.

**Pixel space.** Attacks work in [0, 1] and clamp there. Each seed's points are mapped into the
unit box by one affine map ``x' = (x − lo)/s`` (per-coordinate ``lo``, one scale ``s`` for both
coordinates so an L∞ ball stays an L∞ ball) with a margin ≥ ε₂ around the data, so ``x ± ε₂``
stays inside [0, 1] and the clamp never binds. The inverse map is the model's ``Normalize``
(mean = −lo/s, std = 1/s), so the network sees raw coordinates, and an ε in raw units is ε/s in
[0, 1] units: FGSM on the mapped data is FGSM on the raw data, mapped (tests/test_bench_two_moon.py).

**Budget.** The paper trains 5000 epochs (batch size and optimiser not given). Here every run uses
the library's loop (:func:`medrobust.training.train_model`: cosine learning-rate decay, seeded
order) with Adam; the defaults (:class:`TwoMoonConfig`) keep all 35 runs within about ten minutes
on two CPU cores; ``benchmarks/two_moon.md`` records the choices of each run.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medrobust.attacks import FGSM
from medrobust.bench.report import publish
from medrobust.bench.two_moon_report import format_table, paper_pattern, sample_std, to_markdown
from medrobust.data.shards import ArraySplit
from medrobust.defenses import TrainingMethod
from medrobust.defenses.arfl import ARFL
from medrobust.defenses.dual_at import DualAT
from medrobust.defenses.standard import Standard
from medrobust.defenses.trades import TRADES
from medrobust.models import Classifier, ModelSpec, accuracy, build_model
from medrobust.training import OptimConfig, train_model
from medrobust.utils import seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoMoonConfig:
    """Every knob of the benchmark; ε values are in raw two-moon units."""

    n_train: int = 10_000
    n_test: int = 1_000
    noise: float = 0.2
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    eps_train: float = 0.05  # ε₁: FGSM budget of adversarial training (and TRADES' inner budget)
    eps_attack: float = 0.2  # ε₂: FGSM budget of the evaluation attack
    lam: float = 0.5  # ARFL's λ on two-moon
    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 0.01
    trades_beta: float = 6.0
    trades_steps: int = 5
    margin: float = 0.25  # raw units around the data inside the unit box (must be >= eps_attack)
    settings: tuple[str, ...] = ("A", "B", "C", "D", "E", "F", "G", "H")
    threads: int = 1  # torch threads while the bench runs (a 2-10-10-1 MLP gains nothing from more)

    def __post_init__(self) -> None:
        if self.margin < self.eps_attack:
            raise ValueError(f"two-moon: margin ({self.margin}) must be >= eps_attack ({self.eps_attack}) "
                             "so that x ± ε₂ stays inside [0, 1]")
        unknown = set(self.settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"two-moon: unknown settings {sorted(unknown)}; allowed: {', '.join(SETTINGS)}")
        if not self.seeds:
            raise ValueError("two-moon: at least one seed")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"two-moon: optimizer must be adam or sgd, got {self.optimizer!r}")


# --------------------------------------------------------------------------------------------------
# data and the unit-box map
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitBox:
    """``x' = (x − lo) / scale``: raw 2-D coordinates → [0, 1]² (one scale for both coordinates)."""

    lo: tuple[float, float]
    scale: float

    @classmethod
    def fit(cls, points: np.ndarray, margin: float) -> UnitBox:
        """The smallest square box holding ``points`` with ``margin`` raw units on every side.

        Args:
            points, margin: raw coordinates ``[N, 2]``, and the raw units left free around them.
        """
        lo = points.min(axis=0) - margin
        hi = points.max(axis=0) + margin
        return cls((float(lo[0]), float(lo[1])), float((hi - lo).max()))

    def to_unit(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw coordinates ``[..., 2]`` (array or tensor) → float32 unit-box coordinates."""
        x = torch.as_tensor(x, dtype=torch.float32)
        return (x - torch.tensor(self.lo, dtype=torch.float32)) / self.scale

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-box coordinates ``[..., 2]`` → raw coordinates (the inverse of :meth:`to_unit`)."""
        return x * self.scale + torch.tensor(self.lo, dtype=torch.float32)

    @property
    def normalize_mean(self) -> tuple[float, float]:
        """``Normalize`` mean so that ``(x' − mean) / std`` gives the raw coordinates back."""
        return (-self.lo[0] / self.scale, -self.lo[1] / self.scale)

    @property
    def normalize_std(self) -> tuple[float, float]:
        """``Normalize`` std (``1 / scale`` for both coordinates), the pair of :attr:`normalize_mean`."""
        return (1.0 / self.scale, 1.0 / self.scale)


@dataclass
class MoonData:
    """One seed's ``make_moons`` draws: ``[N, 2]`` float points and ``[N]`` 0/1 labels, train and test."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_data(cfg: TwoMoonConfig, seed: int) -> MoonData:
    """``make_moons`` train and test sets for one seed (independent draws, balanced classes).

    Args:
        cfg: the benchmark's knobs (``n_train``, ``n_test``, ``noise``).
        seed: the run's seed; the draws use ``random_state`` 2·seed (train) and 2·seed + 1 (test).

    Returns:
        The points in raw make_moons coordinates and their labels.
    """
    from sklearn.datasets import make_moons

    x_tr, y_tr = make_moons(n_samples=cfg.n_train, noise=cfg.noise, random_state=2 * seed)
    x_te, y_te = make_moons(n_samples=cfg.n_test, noise=cfg.noise, random_state=2 * seed + 1)
    return MoonData(x_tr, y_tr, x_te, y_te)


def moon_model(box: UnitBox, seed: int) -> Classifier:
    """The paper's 2-10-10-1 MLP whose ``Normalize`` undoes ``box``, so the network sees raw coordinates.

    Args:
        box: the unit-box map of this seed's points.
        seed: seeds the initial weights.

    Returns:
        The model (binary head: cross-entropy equals binary cross-entropy).
    """
    torch.manual_seed(seed)
    return build_model(ModelSpec("mlp", 2, in_channels=2, width=10, head="binary",
                                 mean=box.normalize_mean, std=box.normalize_std))


# --------------------------------------------------------------------------------------------------
# the settings of Table 1
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """A Table 1 row: key, label, ``build(cfg, ε₁ in [0, 1] units, seed) -> method`` (None: not run), note."""
    key: str
    label: str
    build: Callable[[TwoMoonConfig, float, int], TrainingMethod] | None  # (cfg, ε₁ in [0,1] units, seed) -> method
    note: str = ""


def _fgsm_dual_at(r: float) -> Callable[[TwoMoonConfig, float, int], TrainingMethod]:
    return lambda cfg, eps, seed: DualAT(r=r, eps=eps, steps=1, step_size=eps, random_start=False, seed=seed)


def _fgsm_arfl(r: float) -> Callable[[TwoMoonConfig, float, int], TrainingMethod]:
    return lambda cfg, eps, seed: ARFL(r=r, lam=cfg.lam, attack="fgsm", eps=eps, seed=seed)


SETTINGS: dict[str, Setting] = {s.key: s for s in [
    Setting("A", "standard training (r=1)", lambda cfg, eps, seed: Standard()),
    Setting("B", "standard + ARFL", _fgsm_arfl(1.0)),
    Setting("C", "adversarial training (r=0)", _fgsm_dual_at(0.0)),
    Setting("D", "adversarial training + ARFL", _fgsm_arfl(0.0)),
    Setting("E", "dual adversarial training (r=0.5)", _fgsm_dual_at(0.5)),
    Setting("F", "dual adversarial training + ARFL", _fgsm_arfl(0.5)),
    Setting("G", "TRADES", lambda cfg, eps, seed: TRADES(eps=eps, steps=cfg.trades_steps,
                                                           step_size=2.5 * eps / cfg.trades_steps,
                                                           beta=cfg.trades_beta, seed=seed)),
    Setting("H", "MIRST", None, "not implemented in medrobust"),
]}


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def run_one(cfg: TwoMoonConfig, setting: Setting, data: MoonData, seed: int) -> dict[str, float]:
    """Train one setting on one seed's data: ``clean`` and FGSM-ε₂ ``adv`` test accuracy, box ``scale``, ``lo``.

    Args:
        cfg: the benchmark's budgets.
        setting: a row with a ``build`` (not H).
        data, seed: one seed's draws (:func:`make_data`) and that seed (initial weights, method, data order).
    """
    assert setting.build is not None
    box = UnitBox.fit(np.concatenate([data.x_train, data.x_test]), cfg.margin)
    x_tr, x_te = box.to_unit(data.x_train), box.to_unit(data.x_test)
    y_tr, y_te = torch.as_tensor(data.y_train, dtype=torch.long), torch.as_tensor(data.y_test, dtype=torch.long)
    seed_everything(seed)
    model = moon_model(box, seed)
    defense = setting.build(cfg, cfg.eps_train / box.scale, seed)
    train_model(model, defense, ArraySplit(x_tr, y_tr, pd.DataFrame()), None, epochs=cfg.epochs,
                batch_size=cfg.batch_size, optim=OptimConfig(name=cfg.optimizer, lr=cfg.lr), seed=seed,
                desc=f"two-moon {setting.key} seed {seed}")
    model.eval()
    x_adv = FGSM(model, eps=cfg.eps_attack / box.scale)(x_te, y_te)
    return {"clean": accuracy(model, x_te, y_te), "adv": accuracy(model, x_adv, y_te),
            "scale": box.scale, "lo": list(box.lo)}


@dataclass
class Row:
    """One setting's per-seed clean and FGSM-ε₂ test accuracies; key, label and note as in :class:`Setting`."""
    key: str
    label: str
    clean: list[float] = field(default_factory=list)
    adv: list[float] = field(default_factory=list)
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """The row as JSON: per-seed values, their means and sample stds, and the ``mean`` of both means."""
        if not self.clean:
            return {"setting": self.key, "label": self.label, "note": self.note, "clean": [], "adv": [],
                    "clean_mean": None, "clean_std": None, "adv_mean": None, "adv_std": None, "mean": None}
        cm, am = statistics.fmean(self.clean), statistics.fmean(self.adv)
        return {"setting": self.key, "label": self.label, "note": self.note, "clean": self.clean, "adv": self.adv,
                "clean_mean": cm, "clean_std": sample_std(self.clean), "adv_mean": am, "adv_std": sample_std(self.adv),
                "mean": (cm + am) / 2}


def bench_two_moon(cfg: TwoMoonConfig = TwoMoonConfig()) -> dict[str, Any]:
    """Run every setting on every seed; returns the report (also logged as a table)."""
    threads = torch.get_num_threads()
    quiet = logging.getLogger("medrobust.training")
    level = quiet.level
    torch.set_num_threads(cfg.threads)
    quiet.setLevel(logging.WARNING)  # one line per epoch × 35 runs would bury the table
    start = time.perf_counter()
    rows = {k: Row(k, SETTINGS[k].label, note=SETTINGS[k].note) for k in cfg.settings}
    boxes = []
    try:
        for seed in cfg.seeds:
            data = make_data(cfg, seed)
            for key in cfg.settings:
                setting = SETTINGS[key]
                if setting.build is None:
                    continue
                t0 = time.perf_counter()
                res = run_one(cfg, setting, data, seed)
                rows[key].clean.append(res["clean"])
                rows[key].adv.append(res["adv"])
                log.info("two-moon seed %d %s (%s): clean %.4f, FGSM ε₂ %.4f  [%.1fs]", seed, key, setting.label,
                         res["clean"], res["adv"], time.perf_counter() - t0)
            boxes.append({"seed": seed, "lo": res["lo"], "scale": res["scale"]})
    finally:
        torch.set_num_threads(threads)
        quiet.setLevel(level)
    report = {"config": asdict(cfg), "unit_box": boxes, "seconds": time.perf_counter() - start,
              "torch_threads": cfg.threads, "torch_version": torch.__version__,
              "rows": [rows[k].summary() for k in cfg.settings]}
    report["pattern"] = paper_pattern(report["rows"])
    log.info("\n%s", format_table(report))
    return report


def config_from_options(seeds: int = 0, epochs: int = 0, batch_size: int = 0, lr: float = 0.0,
                        n_train: int = 0) -> TwoMoonConfig:
    """The CLI's options as a :class:`TwoMoonConfig`: options left at 0 keep its defaults.

    Args:
        seeds: run seeds ``0 .. seeds - 1``.
        epochs, batch_size, lr, n_train: the :class:`TwoMoonConfig` fields of those names.
    """
    given = {"seeds": tuple(range(seeds)) if seeds else None, "epochs": epochs or None,
             "batch_size": batch_size or None, "lr": lr or None, "n_train": n_train or None}
    return TwoMoonConfig(**{k: v for k, v in given.items() if v is not None})


def run(out: Path, command: str, cfg: TwoMoonConfig = TwoMoonConfig()) -> dict[str, Any]:
    """Run the benchmark and write ``<out>.json`` and ``<out>.md`` with ``command``; returns the report.

    Args:
        out, command: the output path without its suffix, and the command line that reproduces the run.
        cfg: the benchmark's knobs.
    """
    report = bench_two_moon(cfg)
    publish(out, report, to_markdown(report, command, Path(out).with_suffix(".json").name), command)
    return report


__all__ = ["SETTINGS", "TwoMoonConfig", "UnitBox", "bench_two_moon", "config_from_options", "make_data", "moon_model",
           "run", "run_one"]
