"""``two_moons``: scikit-learn's ``make_moons`` points, the toy problem of the ARFL paper.

Each item is one 2-D point, stored as it is (no image resize): a (1, 2) float32 array, so the
shards are (N, 1, 1, 2) and models see a 1x2 "image" (``mlp`` backbone). Classes ``moon0`` /
``moon1`` are make_moons' labels 0 / 1.

Splits. ``train`` and ``test`` are separate draws (``n_train`` and ``n_test`` points) with seeds
derived from ``data.two_moons.seed`` (``SeedSequence([seed, 0])`` and ``[seed, 1]``), so the same
seed gives the same dataset and the test set is independent of the train set. ``val`` is the last
10 % of the train draw (at least one point; make_moons shuffles, so this is a random subset):
``n_train`` counts train + val.

Scaling. Noise-free make_moons points lie in x in [-1, 2], y in [-0.5, 1]. One FIXED affine map,
the same scale on both axes so distances (and so attack budgets) keep their geometry, takes the
square x in [-1.5, 2.5], y in [-1.75, 2.25] (the support plus a margin of at least 0.5 = 2.5 sigma
at the default noise 0.2) onto [0, 1]^2::

    u = (x + 1.5) / 4,    v = (y + 1.75) / 4

so an epsilon of e in the stored [0, 1] space is 4e in make_moons units (8/255 -> 0.125). Points
beyond the square (noise > ~0.2 makes them more frequent) are clipped onto its edge; the number
clipped is logged, with a warning when it exceeds 1 %. With ``noise: 0`` the train and test draws
share points (make_moons places noise-free points on a fixed grid), which ingest quarantines as
``duplicate_image``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pydantic import Field

from medrobust.config import Seed, StrictModel
from medrobust.data.sources.base import SOURCES, Item, Source

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)

#: the fixed map: stored = (point - LOW) / SCALE, then clipped to [0, 1]
LOW = np.array([-1.5, -1.75])
SCALE = 4.0
VAL_FRACTION = 0.1


class TwoMoonsConfig(StrictModel):
    """``data.two_moons``: sklearn ``make_moons`` (the ARFL paper's toy data), scaled into [0, 1]."""

    n_train: int = Field(10_000, ge=10, le=10_000_000)
    n_test: int = Field(1_000, ge=10, le=10_000_000)
    noise: float = Field(0.2, ge=0.0, le=10.0)
    seed: Seed = 0


def scale_points(points: np.ndarray) -> tuple[np.ndarray, int]:
    """make_moons coordinates -> [0, 1]^2 (float32) with the fixed map; returns (scaled, number clipped).

    Args:
        points: (N, 2) make_moons coordinates.

    Returns:
        The scaled points, (N, 2) float32 clipped to [0, 1], and how many points lay outside the square.
    """
    u = (np.asarray(points, dtype=np.float64) - LOW) / SCALE
    outside = int(np.any((u < 0.0) | (u > 1.0), axis=1).sum())
    return np.clip(u, 0.0, 1.0).astype(np.float32), outside


def draw(n: int, noise: float, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` make_moons points (scaled) and labels from the ``stream``-th seed derived from ``seed``.

    Clipped points are logged (a warning when more than 1 % of ``n``).

    Args:
        n: the number of points.
        noise: make_moons' noise.
        seed: the base seed (``data.two_moons.seed``).
        stream: which derived seed (``SeedSequence([seed, stream])``): 0 for train + val, 1 for test.

    Returns:
        (points (n, 2) float32 in [0, 1], labels (n,) int64 in {0, 1}).
    """
    from sklearn.datasets import make_moons

    state = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    x, y = make_moons(n_samples=n, noise=noise, random_state=state)
    scaled, outside = scale_points(x)
    if outside:
        (log.warning if outside > 0.01 * n else log.info)(
            "two_moons: %d of %d points outside the fixed square were clipped onto its edge (noise %.3g)",
            outside, n, noise)
    return scaled, y.astype(np.int64)


@SOURCES.register("two_moons", dicom="none", vectors=True)
class TwoMoonsSource(Source):
    """make_moons points as (1, 2) array items (``data.two_moons``).

    Args:
        data: the ``data`` section; ``data.two_moons`` is used.
    """

    name = "two_moons"
    classes = ("moon0", "moon1")

    def __init__(self, data: DataConfig, **_: Any) -> None:
        self.cfg = data.two_moons

    def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{split: (points (N, 2) in [0, 1], labels (N,))}.

        Returns:
            ``train``, ``val`` (the last 10 % of the train draw, at least one point) and ``test``, each as
            (points float32, labels int64).
        """
        cfg = self.cfg
        x_train, y_train = draw(cfg.n_train, cfg.noise, cfg.seed, 0)
        x_test, y_test = draw(cfg.n_test, cfg.noise, cfg.seed, 1)
        n_val = max(1, int(round(VAL_FRACTION * cfg.n_train)))
        cut = cfg.n_train - n_val
        return {
            "train": (x_train[:cut], y_train[:cut]),
            "val": (x_train[cut:], y_train[cut:]),
            "test": (x_test, y_test),
        }

    def items(self) -> Iterator[Item]:
        """One array item per point, labelled, with its split; each point is its own group."""
        for split, (points, labels) in self.splits().items():
            for i, (point, label) in enumerate(zip(points, labels, strict=True)):
                uid = f"two_moons-{split}-{i}"
                yield Item(ref=f"{split}[{i}]", kind="array", array=point.reshape(1, 2).astype(np.float32),
                           resize=False, label=self.classes[int(label)], split=split, group=uid, uid=uid)


__all__ = ["LOW", "SCALE", "TwoMoonsSource", "draw", "scale_points"]
