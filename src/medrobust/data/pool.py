"""Ingest's item loop over a whole source, with decoding in a bounded pool of worker processes.

The main process reads (network, disk), labels and records, in item order; workers hash and decode
the bytes. The result is byte-identical with and without the pool, and at most ``2 * workers``
chunks of :data:`POOL_CHUNK` raw items are in flight, so memory stays bounded however large the source.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.data.items import IngestState, decode_pixels, finish, process_item, quarantine, read_item
from medrobust.data.sources import Item, Rejected, Source

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Pool initializer: the worker gets SIGKILL when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``).

    Without it a ``kill -9`` of ingest leaves its decode workers running, orphaned. If the parent died
    before the call took effect, the worker exits at once. Elsewhere than Linux this is a no-op: the
    pool's own shutdown (on any exit but SIGKILL) still stops the workers.
    """
    import ctypes
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os._exit(1)


POOL_MIN_ITEMS = 256  # fewer items are decoded in-process (a pool's start-up would cost more)
POOL_CHUNK = 16  # items per worker task


def decode_chunk(jobs: list[tuple[str, bytes | None, np.ndarray | None, bool, int, Any]]) -> list[tuple[Any, ...]]:
    """Worker side: decode a chunk; picklable outcomes (exceptions with custom args do not pickle).

    Args:
        jobs: one tuple of :func:`~medrobust.data.items.decode_pixels` arguments per item
            (kind, raw bytes, array, resize, size, ``data.dicom``).

    Returns:
        One outcome per job, in order: ``("ok", sha256, (pixels, header, facts))`` or
        ``("rejected", sha256, reason, message, uid)``; the SHA-256 is of the raw bytes (``""`` without bytes).
    """
    out: list[tuple[Any, ...]] = []
    for job in jobs:
        raw = job[1]
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else ""
        try:
            out.append(("ok", digest, decode_pixels(*job)))
        except Rejected as rej:
            out.append(("rejected", digest, rej.reason, rej.message, rej.uid))
    return out


def process_items(items: Iterable[Item], src: Source, cfg: DataConfig, state: IngestState,
                  workers: int) -> int:
    """All items through :func:`process_item`; with ``workers > 1`` decoding runs in a process pool.

    The main process reads (network/disk), labels and records, in item order; workers hash and
    decode the bytes. So the result is identical with and without the pool; at most ``2 * workers`` chunks of
    :data:`POOL_CHUNK` raw items are in flight, so memory stays bounded however large the source.
    Returns the number of items. Sources of fewer than :data:`POOL_MIN_ITEMS` items are processed in-process.

    Args:
        items: the source's items (consumed once).
        src: the source that delivered them (labels).
        cfg: the ``data`` section (image size, DICOM policies).
        state: what the loop gathers; updated in place.
        workers: decode processes; ``<= 1`` decodes in the main process.

    Returns:
        The number of items processed (kept, quarantined or left out).
    """
    it = iter(items)
    n = 0
    if workers <= 1:
        for item in it:
            n += 1
            process_item(item, src, cfg, state)
        return n
    head = list(itertools.islice(it, POOL_MIN_ITEMS))
    if len(head) < POOL_MIN_ITEMS:  # small sources: a pool costs more than it saves
        for item in head:
            process_item(item, src, cfg, state)
        return len(head)
    size, dcfg = cfg.image_size, cfg.dicom
    # fork: workers start in milliseconds with everything imported. They run only numpy, Pillow and
    # pydicom (decode_pixels never touches torch), so the parent's torch/OpenMP state cannot bite.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    window: collections.deque[tuple[list[tuple[Item, str]], Any]] = collections.deque()
    chunk: list[tuple[Item, str]] = []
    jobs: list[tuple[str, bytes | None, np.ndarray | None, bool, int, Any]] = []
    import os

    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:

        def drain(limit: int) -> None:
            while len(window) > limit:
                members, fut = window.popleft()
                for (item, digest), out in zip(members, fut.result(), strict=True):
                    digest = digest or out[1]  # bytes are hashed in the worker, arrays here
                    if out[0] == "ok":
                        finish(item, src, state, digest, out[2])
                    else:
                        rej = Rejected(out[2], out[3])
                        rej.uid = out[4]
                        quarantine(item, src, state, rej, digest)

        def submit() -> None:
            nonlocal chunk, jobs
            if chunk:
                window.append((chunk, pool.submit(decode_chunk, jobs)))
                chunk, jobs = [], []
                drain(2 * workers)

        for item in itertools.chain(head, it):
            n += 1
            try:
                if item.read is not None:
                    raw, digest = item.read(), ""
                else:
                    raw, digest = read_item(item)
            except Rejected as rej:  # keep item order: everything before it first
                submit()
                drain(0)
                quarantine(item, src, state, rej, "")
                continue
            chunk.append((item, digest))
            jobs.append((item.kind, raw, item.array, item.resize, size, dcfg))
            if len(chunk) >= POOL_CHUNK:
                submit()
        submit()
        drain(0)
    return n


__all__ = ["POOL_CHUNK", "POOL_MIN_ITEMS", "decode_chunk", "process_items"]
