"""The RAN head: a feature transform ``Z = g(F)``, a linear classifier on ``Z``, and learned class centroids.

Used by :mod:`medrobust.defenses.ran` (Han et al., arXiv 2407.02716) on top of a frozen encoder:
``F = model.embed(x)``, ``Z = head.transform(F)``, ``logits = head.classifier(Z)``. ``g`` keeps the
feature width (``D → hidden → D``, ReLU between), so RAN's consistency term compares ``Z`` with ``F``
directly. The centroids are parameters (``[num_classes, D]``, in ``Z`` space) so they train with the head
and are saved with the model; :meth:`RANHead.init_centroids` sets them from class means.
Registered as ``HEADS["ran"]``; ``forward`` gives the logits, so a RAN model evaluates like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.models.registry import HEADS


class RANHead(nn.Module):
    """``classifier(transform(F))`` with ``centroids`` beside them.

    Args:
        dim: the feature width ``D`` (``Z`` has the same width).
        num_classes: number of classes (rows of ``centroids``).
        hidden: the transform's hidden width (0: ``D``).
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        hidden = hidden or dim
        self.transform = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.classifier = nn.Linear(dim, num_classes)
        self.centroids = nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(features))

    @torch.no_grad()
    def init_centroids(self, z: torch.Tensor, y: torch.Tensor) -> list[int]:
        """Set each class's centroid to the mean of its rows of ``z``; returns the classes with no rows
        (their centroids keep their random initialisation).

        Args:
            z: transformed features ``[N, D]`` (``Z`` space).
            y: class indices ``[N]``.

        Returns:
            The class indices that have no row in ``y``.
        """
        absent = []
        for k in range(self.centroids.shape[0]):
            rows = z[y == k]
            if len(rows):
                self.centroids[k].copy_(rows.mean(0))
            else:
                absent.append(k)
        return absent


@HEADS.register("ran")
def build_ran_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    """The ``ran`` head: transform + classifier + class centroids (:mod:`medrobust.defenses.ran`).

    Args:
        dim: the feature width ``D``.
        num_classes: the number of classes.
        hidden: the transform's hidden width (0: ``dim``).

    Returns:
        A :class:`RANHead`.
    """
    return RANHead(dim, num_classes, hidden)


__all__ = ["RANHead", "build_ran_head"]
