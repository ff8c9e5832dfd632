"""The durable trace log: an append-only, fsync'd file that makes a trace safe before the
response returns, so LanceDB ingestion can happen later, in batches, off the request path.

Records are JSON lines in segment files `seg-<n>.jsonl`. `append` writes one line and returns once
it is on disk. Concurrent appends share their fsyncs (group commit, as databases do with their
write-ahead logs): each append writes its line, then waits for an fsync that started after its
write; one thread's fsync makes every line written before it durable, so 16 concurrent requests
pay for about two fsyncs each, not for the 15 queued before them.
`rotate` closes the current segment; the writer ingests closed segments and `drop`s them once
LanceDB holds their rows. After a crash, every segment still on disk is replayed (ingestion is
idempotent on the request id). `erase` rewrites segments without the records a predicate selects,
so erasure reaches data that has not been ingested yet.

One process owns a log directory (an exclusive `flock` on `.owner`, released when the process
dies, `kill -9` included): only the owner appends, rotates and drops, and only the owner writes
its records into LanceDB (traces/ingest.py). Any other process (the CLI, a curation flow next to a
running gateway) may read every segment; it never rotates or drops one, so it cannot unlink a
file the owner is still appending to. The one change another process may make is erasure, under
the store's writers lock held exclusive (`traces.locks`): appends hold it shared, so none runs
while a segment is rewritten, and an owner whose current segment was replaced meanwhile reopens
it by name before its next append (it never writes to an unlinked file). Within a process there
is one `DurableLog` per directory (`DurableLog.open`).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from traces.exceptions import LogOwned
from traces.locks import WritersLock

_OPEN: dict[Path, DurableLog] = {}
_OPEN_LOCK = threading.Lock()


class DurableLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._owner_fd: int | None = None
        self._fh = None
        self._current_path: Path | None = None
        self._seq = 0
        self._counts: dict[Path, int] = {}
        """Records per segment on disk (known to the owner): the log's share of the backlog."""
        self._written = 0
        """Records this process has written (numbered from 1, across segments)."""
        self._synced = 0
        """Of those, how many are known to be on disk: every record numbered up to it."""
        self._syncing = False
        """Whether a thread's fsync is in flight; the others wait on `_synced_cv`."""
        self._synced_cv = threading.Condition(self._lock)
        self.fsyncs = 0
        """fsyncs this process's appends and closes have made (fewer than appends under load)."""
        self.writers = WritersLock(directory / ".writers.lock")
        """Shared by appends, ingestion and store writes of every process; exclusive for erasure."""

    @classmethod
    def open(cls, directory: Path) -> DurableLog:
        """The process's one log for `directory` (two in one process would rotate each other's
        segments away)."""
        key = Path(directory).resolve()
        with _OPEN_LOCK:
            if key not in _OPEN:
                _OPEN[key] = cls(key)
            return _OPEN[key]

    # ownership ---------------------------------------------------------------------------------

    @property
    def owned(self) -> bool:
        return self._owner_fd is not None

    def acquire(self) -> bool:
        """Become the log's owner if no other live process is; True when this process owns it."""
        with self._lock:
            if self._owner_fd is not None:
                return True
            fd = os.open(self.directory / ".owner", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._owner_fd = fd
            existing = self.segments()
            self._seq = (int(existing[-1].stem.split("-")[1]) + 1) if existing else 1
            self._counts = {s: sum(1 for _ in self.read(s)) for s in existing}
            return True

    def release(self) -> None:
        """Give ownership back (a reader that borrowed it to ingest while no writer was alive)."""
        with self._lock:
            if self._owner_fd is None:
                return
            if self._fh is not None:
                self._close_current()
                self._seq += 1
            os.close(self._owner_fd)  # closing the descriptor releases the flock
            self._owner_fd = None

    def _require_owner(self, what: str) -> None:
        if not self.acquire():
            try:
                pid = (self.directory / ".owner").read_text().strip() or "?"
            except OSError:
                pid = "?"
            raise LogOwned(f"cannot {what}: the trace log in {self.directory} belongs to "
                           f"process {pid} (a running gateway); go through its API instead")

    # writing (owner only) ----------------------------------------------------------------------

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.jsonl"))

    def _current(self):
        if self._fh is not None and not self._still_named():  # erased by another process
            self._close_current()
            if self._current_path is not None:
                self._counts[self._current_path] = sum(1 for _ in self.read(self._current_path))
        if self._fh is None:
            path = self.directory / f"seg-{self._seq:010d}.jsonl"
            self._fh = open(path, "ab", buffering=0)
            self._current_path = path
            self._counts.setdefault(path, 0)
        return self._fh

    def _still_named(self) -> bool:
        """Is the open segment still the file its name points to?"""
        try:
            return os.stat(self._current_path).st_ino == os.fstat(self._fh.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _close_current(self) -> None:
        """Close the open segment (under `_lock`), first making its unsynced records durable:
        an append waiting for its fsync finds them synced."""
        if self._synced < self._written:
            os.fsync(self._fh.fileno())
            self.fsyncs += 1
            self._synced = self._written
            self._synced_cv.notify_all()
        self._fh.close()
        self._fh = None

    def append(self, record: dict) -> None:
        """Write one record and make it durable (fsync) before returning."""
        if self._owner_fd is None:
            self._require_owner("append a trace")
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self.writers.shared():  # held until durable: no erasure rewrites it meanwhile
            with self._lock:
                fh = self._current()
                fh.write(line)
                self._counts[self._current_path] += 1
                self._written += 1
                mine = self._written
            self._sync(mine)

    def _sync(self, mine: int) -> None:
        """Return once record `mine` is on disk. One thread at a time fsyncs, covering every
        record written before its fsync started; the others wait for it, and return when it
        covered theirs or take the next fsync themselves. A failed fsync covers nothing."""
        with self._synced_cv:
            while self._syncing and self._synced < mine:
                self._synced_cv.wait()
            if self._synced >= mine:  # another thread's fsync (or a close) covered it
                return
            self._syncing = True
            covers = self._written
            fd = os.dup(self._fh.fileno())  # stays valid if the segment rotates meanwhile
        synced = False
        try:
            os.fsync(fd)
            synced = True
        finally:
            os.close(fd)
            with self._synced_cv:
                self._syncing = False
                if synced:
                    self.fsyncs += 1
                    self._synced = max(self._synced, covers)
                self._synced_cv.notify_all()

    def rotate(self) -> list[Path]:
        """Close the current segment; returns every closed segment, oldest first."""
        self._require_owner("rotate the trace log")
        with self._lock:
            if self._fh is not None:
                self._close_current()
                self._seq += 1
            return self.segments()

    def drop(self, segment: Path) -> None:
        self._require_owner("drop a log segment")
        with self._lock:
            if self._fh is not None and segment == self._current_path:
                return
            segment.unlink(missing_ok=True)
            self._counts.pop(segment, None)

    def erase(self, selects: Callable[[dict], bool]) -> int:
        """Rewrite every segment without the records `selects` picks; returns how many went.
        Any process may erase, holding `writers` exclusive (the store's erasure does)."""
        removed = 0
        with self._lock:
            if self._fh is not None:
                self._close_current()
                self._seq += 1
            for segment in self.segments():
                keep = [r for r in self.read(segment)]
                gone = [r for r in keep if selects(r)]
                if not gone:
                    continue
                removed += len(gone)
                tmp = segment.with_suffix(".tmp")
                with open(tmp, "wb") as out:
                    for r in keep:
                        if not selects(r):
                            out.write((json.dumps(r, separators=(",", ":"), default=str)
                                       + "\n").encode())
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, segment)
                self._counts[segment] = len(keep) - len(gone)
        return removed

    # reading (any process) ---------------------------------------------------------------------

    @staticmethod
    def read(segment: Path) -> Iterator[dict]:
        try:
            fh = open(segment, "rb")
        except FileNotFoundError:  # the owner ingested and dropped it meanwhile
            return
        with fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a crash: never acknowledged
                    continue

    def pending(self) -> Iterator[dict]:
        for segment in self.segments():
            yield from self.read(segment)

    def backlog(self) -> int:
        """Records on disk not yet dropped (owner: counted as they come; others: read)."""
        if self._owner_fd is not None:
            return sum(self._counts.values())
        return sum(1 for _ in self.pending())
