"""The embedding pass in a low-priority worker process of its own, started by the log's owner.

Why a process: embedding (tokenization in `tokenizers`, the Arrow and LanceDB work around it)
holds the GIL for much of its time, and in the gateway's process that stalls the threads that
capture traces. In a process of its own, at a lower CPU priority (`os.nice`), it takes only the
CPU the gateway leaves (once it has loaded its embedder) and never its GIL. `multiprocessing`'s `spawn` context starts it: a fresh
interpreter, nothing of the gateway's threads or locks inherited.

The contract stays that of the in-process pass (`traces.ingest`): while the worker runs it is the
only writer of vectors, with the same batched update of matched rows under the writers lock held
shared (so an erasure is never undone) and the traces table's lock (so its commits never race the
owner's inserts). The owner talks to it through one pipe: it asks for the rows a reader needs
first (`ask(where)`) and reads the worker's progress from shared counters, so `backlog()` stays
free of I/O.

It exits with its parent: the parent holds the pipe's only writing end, which the kernel closes
when the parent dies (`kill -9` included), and the worker also polls `os.getppid()` in case a
fork of the parent keeps the pipe open. Killing the worker loses nothing: a batch is committed
whole or not at all, and rows without a vector wait for the next worker (the owner starts one
when it finds its worker dead).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traces.store import TraceStoreConfig

log = logging.getLogger("shoal.traces")
STOP = "stop"
_EMBEDDED, _UNEMBEDDED = 0, 1
"""The shared counters: rows embedded by this worker, rows without a vector at its last count."""


class EmbedWorker:
    """The parent's handle on one worker process."""

    def __init__(self, config: TraceStoreConfig) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._counters = ctx.RawArray("q", [0, -1])  # -1: not counted yet
        reader, self._conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=main, name="trace-embedder", daemon=True,
                                   args=(config, reader, self._counters, os.getpid()))
        self.process.start()
        reader.close()  # the parent keeps only the writing end: the child sees EOF when it dies
        self.started = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def embedded(self) -> int:
        return self._counters[_EMBEDDED]

    @property
    def unembedded(self) -> int | None:
        value = self._counters[_UNEMBEDDED]
        return None if value < 0 else value

    def ask(self, where: str | None) -> None:
        """Have the worker embed the rows `where` selects before anything else."""
        try:
            self._conn.send(where)
        except OSError:  # it died meanwhile; the caller's wait runs out
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """Let the worker finish its batch and exit; terminate it if it does not."""
        self.ask(STOP)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self._conn.close()


def _watch(conn, parent: int, requests: queue.Queue) -> None:
    """The worker's lifeline: pass the parent's requests on, exit the moment the parent is gone."""
    while True:
        try:
            if conn.poll(1.0):
                requests.put(conn.recv())
        except (EOFError, OSError):  # the parent's end closed: it exited or was killed
            os._exit(0)
        if os.getppid() != parent:
            os._exit(0)


def main(config: TraceStoreConfig, conn, counters, parent: int) -> None:
    """The worker: embed requested rows first, then whatever has no current vector."""
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_watch, args=(conn, parent, requests), daemon=True).start()
    from traces.store import TraceStore

    ingestion = TraceStore(config).ingestion
    ingestion.embedder.embed(["warm"])  # loaded at the parent's priority: ready sooner
    os.nice(config.embed_niceness)
    idle = False
    while True:
        try:
            request = requests.get(block=idle, timeout=config.flush_interval_s)
        except queue.Empty:
            request = None
        if request == STOP:
            return
        try:
            if request is not None:
                ingestion.embed_rows(request)
            counters[_UNEMBEDDED] = ingestion.count_unembedded()
            idle = ingestion.embed_rows(limit=config.embed_batch) == 0
            counters[_EMBEDDED] = ingestion.embedded
            counters[_UNEMBEDDED] = ingestion.unembedded
        except Exception:  # rows stay unembedded; the next round retries
            log.exception("trace embedding failed")
            time.sleep(5 * config.flush_interval_s)
