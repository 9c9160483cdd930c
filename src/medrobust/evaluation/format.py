"""How a figure reads in a report: ``0.83 [0.74, 0.90]``."""

from __future__ import annotations

from typing import Any


def fmt(est: dict[str, Any] | None, digits: int = 2) -> str:
    """``value [low, high]`` of an estimate; ``n/a`` where it is undefined.

    Example:
        >>> fmt({"value": 0.8333, "ci": [0.7463, 0.8947], "n": 96})
        '0.83 [0.75, 0.89]'
    """
    if not est or est.get("value") is None:
        return "n/a"
    lo, hi = est["ci"]
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{est['value']:.{digits}f}{ci}"


def fmt_n(est: dict[str, Any] | None, digits: int = 2) -> str:
    """:func:`fmt` followed by the number of images: ``0.83 [0.75, 0.89] (n=96)``.

    Args:
        est: an estimate (``{"value", "ci", "n"}``) or None.
        digits: decimals.

    Returns:
        The text.
    """
    n = (est or {}).get("n")
    return fmt(est, digits) + (f" (n={n})" if n is not None else "")


def worst_shift(metrics: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, entry) of the natural shift with the lowest mean accuracy over severities, or None."""
    shifts = [(name, e) for name, e in (metrics.get("shifts") or {}).items() if e["mean_accuracy"]["value"] is not None]
    return min(shifts, key=lambda ne: ne[1]["mean_accuracy"]["value"]) if shifts else None


__all__ = ["fmt", "fmt_n", "worst_shift"]
