"""The one writer every benchmark shares: ``<out>.json`` (the numbers and the command), ``<out>.md``
(for people), and the command line that reproduces them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medrobust.utils import write_json


def command_line(name: str, options: dict[str, Any], defaults: dict[str, Any] | None = None,
                 program: str = "medrobust bench") -> str:
    """``medrobust bench <name> --opt value ...`` with every option that differs from its default.

    Args:
        name: the benchmark's CLI name (``methods``, ``two-moon`` ...).
        options: option name (with underscores) -> value, as given.
        defaults: option name -> default; options equal to their default (or None/empty) are left out.
        program: the command before ``name`` (``medrobust`` for ``medrobust compare``).

    Returns:
        The command line: booleans as ``--flag`` / ``--no-flag``, floats in ``:g`` format.

    Example:
        >>> command_line("train", {"methods": "pgd_at", "repeats": 3}, {"methods": "", "repeats": 3})
        'medrobust bench train --methods pgd_at'
    """
    defaults = defaults or {}
    parts = [f"{program} {name}"]
    for key, value in options.items():
        if value is None or value == "" or (key in defaults and value == defaults[key]):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def publish(out: str | Path, report: dict[str, Any], markdown: str, command: str) -> tuple[Path, Path]:
    """Write ``<out>.json`` (``report`` plus ``command``) and ``<out>.md``.

    Args:
        out: the path without its suffix (any suffix is replaced); its folder is created.
        report: the JSON-able numbers.
        markdown: the page for people.
        command: the command line that reproduces them (stored under ``"command"``).

    Returns:
        (the JSON path, the markdown path).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    write_json(json_path, {**report, "command": command})
    md_path.write_text(markdown)
    return json_path, md_path


__all__ = ["command_line", "publish"]
