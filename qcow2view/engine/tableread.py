"""Reading whole tables (L2 tables) a batch at a time, with read-ahead.

:func:`read_tables` reads one cluster per offset into a native uint64 array;
:class:`TableReader` streams batches of them in order, reading the next batch in
a second thread while the caller decodes this one.  Both halves release the GIL
for most of their work (``preadv`` and numpy's byte-swapping copy on one side,
numpy's table arithmetic on the other), so a walk uses both cores without any
change to the order in which its results are counted.
"""

from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from .clusters import contiguous_rows
from .refcounts import read_zero_filled

U64 = np.uint64
# Read-ahead pays where a batch is a few big reads (the GIL is free while they
# run); with small clusters a batch is thousands of Python-level reads that
# would contend with the decoding for the interpreter (512-byte clusters: ~15%
# more CPU), so those are read in line.
AHEAD_MIN_CLUSTER = 1 << 15


def read_tables(file, offsets: np.ndarray, cs: int, extended: bool,
                buf: np.ndarray | None = None, scratch: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one cluster at each offset into an (n, cs/8) native uint64 array
    (inside ``buf`` when it is big enough: reusing one buffer spares the page
    faults of a fresh one per batch).  With ``scratch``, the bytes land there and
    are byte-swapped into ``buf`` by a numpy copy (which releases the GIL);
    otherwise they are swapped in place.  Bytes past the end of the file read as
    zeros, as in QEMU."""
    n = len(offsets)
    words = n * (cs // 8)
    arr = buf[:words] if buf is not None and len(buf) >= words else np.empty(words, dtype=U64)
    land = scratch[:words] if scratch is not None and len(scratch) >= words else arr
    mv = memoryview(land).cast("B")
    fd = file.fd
    size = file.size
    preadv = os.preadv
    short = []
    for k, o in enumerate(offsets.tolist()):
        if o + cs <= size:
            if preadv(fd, [mv[k * cs:(k + 1) * cs]], o) != cs:
                short.append((k, o))
        else:
            short.append((k, o))
    for k, o in short:   # past the end of the file (or a short read): zeros, as QEMU
        mv[k * cs:(k + 1) * cs] = read_zero_filled(file, o, cs)
    if land is arr:
        arr.byteswap(inplace=True)
    else:
        np.copyto(arr, land.view(">u8"))
    table = arr.reshape(n, -1)
    if extended:
        return table[:, 0::2], table[:, 1::2]
    return table, None


class TableReader:
    """Batches of L2 tables, read ahead in a second thread (see the module doc).

    Two result buffers alternate, so the batch being read never overwrites the one
    the caller holds; a result is valid until the caller asks for the next one.
    Memory: three buffers of ``per_batch`` clusters."""

    def __init__(self, file, cs: int, extended: bool, per_batch: int) -> None:
        self.file = file
        self.cs = cs
        self.extended = extended
        self.words = per_batch * (cs // 8)
        self._bufs: list[np.ndarray | None] = [None, None]
        self._scratch: np.ndarray | None = None
        # the run test's ramp (tables without sub-clusters are the only ones tested)
        self.ramp = np.arange(cs // 8, dtype=U64) * U64(cs)

    def _buf(self, slot: int) -> np.ndarray:
        if self._bufs[slot] is None:
            self._bufs[slot] = np.empty(self.words, dtype=U64)
        return self._bufs[slot]

    def read(self, offsets: np.ndarray, slot: int = 0, ahead: bool = False
             ) -> tuple[np.ndarray, np.ndarray | None]:
        if ahead and self._scratch is None:
            self._scratch = np.empty(self.words, dtype=U64)
        return read_tables(self.file, offsets, self.cs, self.extended, self._buf(slot),
                           self._scratch if ahead else None)

    def _read_runs(self, offsets: np.ndarray, slot: int, ahead: bool
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        raw, bm = self.read(offsets, slot, ahead)
        if bm is not None:
            return raw, bm, None
        # the scratch buffer is free once the batch is decoded: the run test's temporary
        tmp = self._scratch[:raw.size].reshape(raw.shape) if ahead else None
        return raw, bm, contiguous_rows(raw, self.cs, self.ramp, tmp)

    def stream(self, jobs: list[tuple[np.ndarray, object]]
               ) -> Iterator[tuple[object, np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """(payload, entries, bitmaps, runs) for each (offsets, payload) of ``jobs``, in
        order; ``runs``: :func:`contiguous_rows` of the entries (None with sub-clusters),
        tested in the read-ahead thread, where it costs the walk nothing."""
        if len(jobs) <= 1 or self.cs < AHEAD_MIN_CLUSTER:   # nothing to gain
            for offs, payload in jobs:
                yield (payload, *self._read_runs(offs, 0, False))
            return
        ahead = _ReadAhead(self._read_runs, [offs for offs, _ in jobs])
        try:
            for k, (_, payload) in enumerate(jobs):
                yield (payload, *ahead.result(k))
                ahead.done_with(k)
        finally:
            ahead.close()       # a walk ended early (cancel, error) leaves no reader behind


class _ReadAhead:
    """One thread that reads the batches in order into the two result slots, one
    batch ahead of the caller: batch k+2 goes into batch k's slot once the caller
    has given batch k back.  One thread for a whole walk: starting one per batch
    cost a scheduler round trip each (Thread.start waits until the thread runs),
    which on a loaded machine is a time slice (1 TiB, one CPU hog: 0.27 -> 0.20 s).
    (concurrent.futures would do, but importing it and logging costs ~8 ms of
    every command's start.)"""

    def __init__(self, read, offsets: list[np.ndarray]) -> None:
        self._read = read
        self._offsets = offsets
        self._results: list = [None] * len(offsets)
        self._ready = [threading.Lock() for _ in offsets]
        for lock in self._ready:
            lock.acquire()
        self._room = threading.Semaphore(0)      # one release per batch given back
        self._stop = False
        # (a daemon: should a caller never close its stream, exit does not wait on it)
        self._thread = threading.Thread(target=self._run, name="qcow2view-readahead",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for k, offs in enumerate(self._offsets):
            if k >= 2:
                self._room.acquire()              # batch k-2's slot is free
            if self._stop:
                return
            try:
                self._results[k] = (self._read(offs, k % 2, True), None)
            except BaseException as e:      # handed to the caller by result()
                self._results[k] = (None, e)
                self._ready[k].release()
                return
            self._ready[k].release()

    def result(self, k: int):
        """Batch ``k`` (waits for it); its slot is read into again once the caller
        has given it back (:meth:`done_with`, when it asks for the next one)."""
        self._ready[k].acquire()
        got, error = self._results[k]
        self._results[k] = None
        if error is not None:
            raise error
        return got

    def done_with(self, k: int) -> None:
        self._room.release()

    def close(self) -> None:
        self._stop = True
        self._room.release()
        self._room.release()
        self._thread.join()
