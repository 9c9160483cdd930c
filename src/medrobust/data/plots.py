"""The ingest figure: a few images per class, to look at what was ingested."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_samples(images: list[np.ndarray], labels: list[str], classes: tuple[str, ...], path: Path) -> None:
    """A grid of up to six images per class (display space, [0, 1]), written to ``path`` as PNG.

    Each row is one class, titled with its name, holding the first images of that class in ``images`` order.

    Args:
        images: 2-D images with values in [0, 1], shown in grey.
        labels: the class name of each image, in the same order.
        classes: the classes to show, one row each (at least one).
        path: the PNG file to write.
    """
    per_class = 6
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.8 * len(classes)))
    axes = np.atleast_2d(axes)
    for r, cls in enumerate(classes):
        idx = [i for i, lbl in enumerate(labels) if lbl == cls][:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(images[idx[c]], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(cls, loc="left", fontsize=9)
    fig.suptitle("ingested samples (display space, [0, 1])", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


__all__ = ["plot_samples"]
