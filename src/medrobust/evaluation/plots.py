"""The evaluation's figures: robustness curves and natural shifts (PNG, rendered here: DVC's HTML plots need
a CDN, which offline users lack)."""

from __future__ import annotations

from pathlib import Path


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_shifts(shifts: dict[str, dict[str, float]], clean_accuracy: float, path: str | Path) -> None:
    """Accuracy against severity, one line per natural shift.

    Args:
        shifts: ``{shift: {severity as a string: accuracy}}`` (``metrics.json``'s ``shifts``).
        clean_accuracy: plotted as severity 0 of every line.
        path: the PNG file to write.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, by_sev in sorted(shifts.items()):
        sev = sorted(by_sev, key=int)
        ax.plot([0] + [int(s) for s in sev], [clean_accuracy] + [by_sev[s] for s in sev], marker="o", label=name)
    ax.set(xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1.02), title="natural shifts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_robustness(
    curves: dict[str, list[tuple[float, float]]],
    transfer: dict[str, list[tuple[float, float]]],
    clean_accuracy: float,
    path: str | Path,
    title: str = "",
    gate: tuple[float, float] | None = None,
) -> None:
    """Accuracy against ε (in /255 units) per attack; transfer sets dashed; the gate as a marker.

    Args:
        curves: ``{attack key: [(ε, accuracy), ...]}`` of the white-box attacks (ε as a fraction).
        transfer: the same for the advgen transfer sets.
        clean_accuracy: plotted at ε = 0 of every curve.
        path: the PNG file to write.
        title: the figure's title; empty: ``"robustness curve"``.
        gate: ``(ε, minimum robust accuracy)`` of the gate, drawn as a red star; None: no marker.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in sorted(curves.items()):
        pts = [(0.0, clean_accuracy), *sorted(pts)]
        ax.plot([e * 255 for e, _ in pts], [a for _, a in pts], marker="o", label=f"white-box {name}")
    for name, pts in sorted(transfer.items()):
        pts = [(0.0, clean_accuracy), *sorted(pts)]
        ax.plot([e * 255 for e, _ in pts], [a for _, a in pts], ls="--", marker="x", label=f"transfer {name}")
    if gate is not None:
        ax.scatter([gate[0] * 255], [gate[1]], marker="*", s=180, c="red", zorder=5, label="gate minimum")
    ax.set(xlabel="ε (×1/255; the norm is in each curve's name)", ylabel="accuracy", ylim=(0, 1.02), title=title or "robustness curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["plot_robustness", "plot_shifts"]
