"""The trace store's writers lock: one `flock` file that every process writing the store shares.

Erasure rewrites tables and log segments; nothing may write them meanwhile, in this process or
another (a gateway ingesting while `shoal traces erase` runs in a shell). So ordinary writers (a
log append, an ingestion batch, an embedding write, a new grant or feedback row) hold the lock
*shared*, and erasure holds it *exclusive*. Each acquisition opens its own descriptor, so threads
of one process exclude each other exactly as processes do (flock locks belong to an open file
description), and the kernel releases a dead process's lock, `kill -9` included.

The file lives next to the durable log, on a local disk (flock does not cross machines; a store
whose tables live in object storage still has its log, and so this lock, on the writer's disk).
Take it before any in-process lock, never inside one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class WritersLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _held(self, mode: int) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """For writers that may run beside each other (appends, inserts, updates)."""
        return self._held(fcntl.LOCK_SH)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """For erasure: no writer of any process runs while it is held."""
        return self._held(fcntl.LOCK_EX)
