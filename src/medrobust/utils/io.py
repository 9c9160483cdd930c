"""Files: atomic stage outputs, SHA-256, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks.

    Args:
        path: the file.
        chunk: bytes read at a time.

    Returns:
        64 lower-case hex characters.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 hex digest of ``data``.

    Args:
        data: the bytes to hash.

    Returns:
        64 lower-case hex characters.
    """
    return hashlib.sha256(data).hexdigest()


def dvc_md5(path: str | Path) -> str:
    """The hash DVC 3 records for ``path`` in ``dvc.lock`` (``md5: ...``), computed without DVC.

    A file: the MD5 of its bytes. A folder: the MD5 of the JSON list of its files' ``{"md5", "relpath"}``,
    sorted by path (``json.dumps(..., sort_keys=True)``), followed by ``.dir`` — DVC's directory object.

    Args:
        path: a file or a folder.

    Returns:
        The hash, e.g. ``a742923a4658e0111ac889ae7c29a4be.dir``.
    """
    path = Path(path)
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    entries = [{"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(path).as_posix()}
               for p in sorted(path.rglob("*")) if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys (NumPy scalars/arrays and paths allowed).

    Args:
        path: the file to write.
        obj: anything JSON-able, plus NumPy numbers and arrays and :class:`~pathlib.Path`.

    Raises:
        TypeError: an object that is none of these.
    """
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file.

    Args:
        path: the file.

    Returns:
        The decoded value.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        json.JSONDecodeError: the file is not valid JSON.
    """
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): it exists
        return True


def _owner(path: Path, marker: str) -> int | None:
    """The PID in ``.<name>.<marker>-<pid>[-…]``, or None when the name carries none."""
    tail = path.name.rsplit(f".{marker}-", 1)[-1]
    head = tail.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def recover_output_dir(final: str | Path) -> list[str]:
    """Repair what a killed :func:`atomic_output_dir` left next to ``final``; returns what was done.

    * ``.<name>.tmp-<pid>-…`` of a process that is gone (or of an unknown one): a half-written output,
      removed.
    * ``.<name>.old-<pid>`` of a process that is gone: the previous outputs, moved aside for the swap.
      When ``final`` is missing the run died between the two renames, so the previous outputs are put
      back (the new ones are not known to be complete); otherwise the swap finished and the old folder
      is removed.

    A folder of a process that still runs is left alone.
    """
    final = Path(final)
    done: list[str] = []
    if not final.parent.is_dir():
        return done
    for old in sorted(final.parent.glob(f".{final.name}.old-*")):
        pid = _owner(old, "old")
        if pid is not None and pid_alive(pid) and pid != os.getpid():
            continue
        if not final.exists():
            old.rename(final)
            done.append(f"restored the previous {final.name}/ (a run died while replacing it)")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name} (left by a finished swap)")
    for tmp in sorted(final.parent.glob(f".{final.name}.tmp-*")):
        pid = _owner(tmp, "tmp")
        if pid is not None and pid_alive(pid):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        done.append(f"removed {tmp.name} (half-written by a run that died)")
    return done


@contextlib.contextmanager
def atomic_output_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; on success it replaces ``final`` atomically.

    A stage that fails leaves the previous outputs untouched: the half-written temp folder is removed
    and ``final`` is never renamed over. A stage that was killed (``kill -9``, a lost node) is
    cleaned up by the next start (:func:`recover_output_dir`): its temporary folder is removed, and a
    kill between the two renames of the swap puts the previous outputs back.

    Args:
        final: the stage's output folder.

    Yields:
        The temporary folder to write into.

    Example:
        >>> with atomic_output_dir("reports/evaluation") as tmp:
        ...     (tmp / "metrics.json").write_text("{}")
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for line in recover_output_dir(final):
        logging.getLogger(__name__).warning("%s: %s", final, line)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


#: a cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """A text cell made inert for spreadsheets: ``'`` before a leading ``= + - @ TAB CR`` (and before a
    leading ``'``, so that :func:`unescape_cell` restores every value exactly); anything else as is."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, "'")):
        return "'" + value
    return value


def unescape_cell(value: Any) -> Any:
    """:func:`escape_cell` undone (one leading ``'`` before a formula character or a ``'`` is dropped)."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith((*FORMULA_START, "'")):
        return value[1:]
    return value


def write_csv(frame: Any, path: str | Path) -> None:
    """``frame.to_csv(path, index=False)`` with every text cell escaped against formula injection.

    Operators open quarantine lists and manifests in spreadsheets; a label or a header value such as
    ``=HYPERLINK(...)`` must arrive as text. Numbers are untouched; :func:`read_csv` reads it back exactly.
    """
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(escape_cell)
    out.to_csv(path, index=False)


def read_csv(path: str | Path, **kwargs: Any) -> Any:
    """``pandas.read_csv`` of a file :func:`write_csv` wrote, with the escaping undone."""
    import pandas as pd

    frame = pd.read_csv(path, **kwargs)
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            frame[col] = frame[col].map(unescape_cell)
    return frame


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename: readers never see half a file.

    Args:
        path: the file to write (its folder is created).
        text: the content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`write_json` to a temporary sibling, then rename: readers never see half a file.

    Args:
        path: the file to write (its folder is created).
        obj: what :func:`write_json` accepts.

    Raises:
        TypeError: an object :func:`write_json` cannot serialise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_json(tmp, obj)
    tmp.replace(path)
