"""The durable trace log: an append-only, fsync'd file that makes a trace safe before the
response returns, so LanceDB ingestion can happen later, in batches, off the request path.

Records are JSON lines in segment files `seg-<n>.jsonl`. `append` writes one line and fsyncs it.
`rotate` closes the current segment; the writer ingests closed segments and `drop`s them once
LanceDB holds their rows. After a crash, every segment still on disk is replayed (ingestion is
idempotent on the request id). `erase` rewrites segments without the records a predicate selects,
so erasure reaches data that has not been ingested yet.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class DurableLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existing = self.segments()
        self._seq = (int(existing[-1].stem.split("-")[1]) + 1) if existing else 1
        self._fh = None

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.jsonl"))

    def _current(self):
        if self._fh is None:
            path = self.directory / f"seg-{self._seq:010d}.jsonl"
            self._fh = open(path, "ab", buffering=0)
            self._current_path = path
        return self._fh

    def append(self, record: dict) -> None:
        """Write one record and make it durable (fsync) before returning."""
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            fh = self._current()
            fh.write(line)
            os.fsync(fh.fileno())

    def rotate(self) -> list[Path]:
        """Close the current segment; returns every closed segment, oldest first."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
                self._seq += 1
            return self.segments()

    @staticmethod
    def read(segment: Path) -> Iterator[dict]:
        with open(segment, "rb") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a crash: never acknowledged
                    continue

    def pending(self) -> Iterator[dict]:
        for segment in self.segments():
            yield from self.read(segment)

    def drop(self, segment: Path) -> None:
        with self._lock:
            if self._fh is not None and segment == self._current_path:
                return
            segment.unlink(missing_ok=True)

    def erase(self, selects: Callable[[dict], bool]) -> int:
        """Rewrite every segment without the records `selects` picks; returns how many went."""
        removed = 0
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
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
        return removed
