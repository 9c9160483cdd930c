"""The training figure: loss and accuracies per epoch (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(epochs: list[dict[str, float]], path: str | Path, title: str = "") -> None:
    """Loss and accuracies per epoch.

    Two panels: ``train_loss``, and every metric whose name ends in ``acc`` or ``accuracy``.

    Args:
        epochs: one metrics mapping per epoch (:attr:`History.epochs <medrobust.training.History.epochs>`).
        path: the PNG file to write.
        title: the figure's title.
    """
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = range(1, len(epochs) + 1)
    ax_l.plot(xs, [e.get("train_loss", float("nan")) for e in epochs], marker="o")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in sorted({k for e in epochs for k in e if k.endswith("acc") or k.endswith("accuracy")}):
        ax_a.plot(xs, [e.get(key, float("nan")) for e in epochs], marker="o", label=key)
    ax_a.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    ax_a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["plot_history"]
