"""Ingest's item loop over a whole source, with decoding in a bounded pool of worker processes.

The main process reads (network, disk), labels and records, in item order; workers hash and decode
the bytes. The result is byte-identical with and without the pool, and at most ``2 * workers``
chunks of :data:`POOL_CHUNK` raw items are in flight, so memory stays bounded however large the source.

One item never stops the loop:

* each worker's address space is bounded (``data.worker_memory_mb`` above what it holds when it
  starts, ``RLIMIT_AS``): an item that needs more fails with ``MemoryError`` and is quarantined as
  ``out_of_memory``, instead of driving the machine into swap or the OOM killer;
* a worker that *dies* (a decoder's segfault or abort) breaks the pool: the chunks then in flight are
  decoded again one item per fresh process, so the culprit is quarantined as ``worker_crashed`` with
  its signal, every other item is kept, and a new pool takes the rest;
* workers die with their parent (:func:`die_with_parent`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.data.items import IngestState, decode_pixels, finish, item_uid, process_item, quarantine, read_item
from medrobust.data.sources import Item, Rejected, Source

log = logging.getLogger(__name__)

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
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os._exit(1)


def limit_memory(extra_bytes: int) -> None:
    """Bound this process's address space to what it maps now plus ``extra_bytes`` (``RLIMIT_AS``; Linux).

    A forked worker starts with its parent's mappings (torch's libraries among them), so the bound is
    relative to them. An allocation past it raises ``MemoryError`` in that worker only. ``extra_bytes <= 0``
    leaves the limit as it is.
    """
    import resource
    import sys

    if extra_bytes <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        mapped = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + extra_bytes if hard == resource.RLIM_INFINITY else min(mapped + extra_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def init_worker(parent: int, extra_bytes: int) -> None:
    """Pool initializer: :func:`die_with_parent`, then :func:`limit_memory`."""
    die_with_parent(parent)
    limit_memory(extra_bytes)


POOL_MIN_ITEMS = 256  # fewer items are decoded in-process (a pool's start-up would cost more)
POOL_CHUNK = 16  # items per worker task

Job = tuple[str, "bytes | None", "np.ndarray | None", bool, int, Any, int]


def decode_chunk(jobs: list[Job]) -> list[tuple[Any, ...]]:
    """Worker side: decode a chunk; picklable outcomes (exceptions with custom args do not pickle).

    Args:
        jobs: one tuple of :func:`~medrobust.data.items.decode_pixels` arguments per item
            (kind, raw bytes, array, resize, size, ``data.dicom``, ``data.max_pixels``).

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
        except Rejected as rej:  # decode_pixels turns every error, MemoryError included, into one
            out.append(("rejected", digest, rej.reason, rej.message, rej.uid))
    return out


def _decode_alone(conn: Any, job: Job, parent: int, extra_bytes: int) -> None:
    init_worker(parent, extra_bytes)
    conn.send(decode_chunk([job])[0])
    conn.close()


def decode_alone(ctx: Any, job: Job, extra_bytes: int) -> tuple[Any, ...]:
    """Decode one item in a process of its own: its outcome, or ``worker_crashed`` if the process died.

    Args:
        ctx: the multiprocessing context.
        job: the item's :func:`~medrobust.data.items.decode_pixels` arguments.
        extra_bytes: the process's memory bound (:func:`limit_memory`).

    Returns:
        The outcome, as :func:`decode_chunk` gives it.
    """
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_decode_alone, args=(send, job, os.getpid(), extra_bytes), daemon=True)
    proc.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:  # the process died before it answered
        out = None
    finally:
        recv.close()
        proc.join()
    if out is not None:
        return out
    code = proc.exitcode or 0
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    digest = hashlib.sha256(job[1]).hexdigest() if job[1] is not None else ""
    return ("rejected", digest, "worker_crashed",
            f"the decode process died ({how}) on this item: a decoder crashed on its content; "
            "check the file with another viewer, re-export or transcode it", item_uid(job[0], job[1]))


class _Pool:
    """A process pool that is replaced when a worker dies; the chunks it loses are decoded item by item."""

    def __init__(self, workers: int, ctx: Any, extra_bytes: int) -> None:
        self.workers, self.ctx, self.extra = workers, ctx, extra_bytes
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self.ctx, initializer=init_worker,
                                   initargs=(os.getpid(), self.extra))

    def _renew(self, broken: ProcessPoolExecutor) -> None:
        if self.pool is broken:
            log.warning("a decode worker died; decoding the items then in flight one by one to find the culprit")
            broken.shutdown(wait=True, cancel_futures=True)
            self.pool = self._start()

    def submit(self, jobs: list[Job]) -> tuple[Any, ProcessPoolExecutor]:
        pool = self.pool
        try:
            return pool.submit(decode_chunk, jobs), pool
        except BrokenProcessPool:
            self._renew(pool)
            return self.pool.submit(decode_chunk, jobs), self.pool

    def result(self, fut: Any, pool: ProcessPoolExecutor, jobs: list[Job]) -> list[tuple[Any, ...]]:
        try:
            return fut.result()
        except BrokenProcessPool:
            self._renew(pool)
            return [decode_alone(self.ctx, job, self.extra) for job in jobs]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


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
        cfg: the ``data`` section (image size, DICOM policies, limits).
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
    size, dcfg, max_pixels = cfg.image_size, cfg.dicom, cfg.max_pixels
    # fork: workers start in milliseconds with everything imported. They run only numpy, Pillow and
    # pydicom (decode_pixels never touches torch), so the parent's torch/OpenMP state cannot bite.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    window: collections.deque[tuple[list[tuple[Item, str]], list[Job], Any, Any]] = collections.deque()
    chunk: list[tuple[Item, str]] = []
    jobs: list[Job] = []
    pool = _Pool(workers, ctx, cfg.worker_memory_mb * 2**20)

    def drain(limit: int) -> None:
        while len(window) > limit:
            members, sent, fut, owner = window.popleft()
            for (item, digest), out in zip(members, pool.result(fut, owner, sent), strict=True):
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
            window.append((chunk, jobs, *pool.submit(jobs)))
            chunk, jobs = [], []
            drain(2 * workers)

    try:
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
            jobs.append((item.kind, raw, item.array, item.resize, size, dcfg, max_pixels))
            if len(chunk) >= POOL_CHUNK:
                submit()
        submit()
        drain(0)
    finally:
        pool.close()
    return n


__all__ = ["POOL_CHUNK", "POOL_MIN_ITEMS", "decode_alone", "decode_chunk", "die_with_parent", "init_worker",
           "limit_memory", "process_items"]
