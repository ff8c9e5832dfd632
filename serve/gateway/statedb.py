"""The gateway's durable state: one SQLite database (WAL) holding batch files, jobs and their
lines (serve.gateway.batches) and the usage meter (serve.gateway.usage).

SQLite, not the trace store's LanceDB: a batch line's answer, its "done" mark, its job's counts
and the owner's metered usage must change together or not at all, and SQLite gives that in one
transaction, in the standard library, with a single file to back up. WAL with
`synchronous=NORMAL` keeps every committed transaction across a killed process (kill -9); a power
loss may drop the last few, which only means those lines run again — an answer and its mark are
lost together, never one without the other.

The connection is shared by threads behind one lock; callers run it in worker threads, never on
the event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, caller TEXT, endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, status TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, in_progress_at INTEGER,
    finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, output_file_id TEXT, error_file_id TEXT,
    errors TEXT, metadata TEXT, total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, created_at);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, result TEXT,
    PRIMARY KEY (batch_id, idx));
CREATE INDEX IF NOT EXISTS lines_state ON lines (state, batch_id, idx);
CREATE TABLE IF NOT EXISTS key_usage (
    owner TEXT PRIMARY KEY, requests INTEGER NOT NULL DEFAULT 0,
    batch_lines INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS node_usage (
    node_id TEXT PRIMARY KEY, traversals INTEGER NOT NULL DEFAULT 0,
    positions INTEGER NOT NULL DEFAULT 0, checks_passed INTEGER NOT NULL DEFAULT 0,
    checks_failed INTEGER NOT NULL DEFAULT 0);
"""


class StateDB:
    """One SQLite file; `transaction()` for writes, `rows()` for reads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside commit together, or none does."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
