"""Ingestion: the durable log into LanceDB rows, and rows into embeddings, as two separate passes.

Rows first: `flush` moves logged traces into the `traces` table in batches (`merge_insert` on the
request id, so a replay never duplicates) with no embedding (`vector` and `embedder` null). It is
cheap, so reads call it to see their own writes. Embeddings later: `embed_pending` picks rows whose
`embedder` is not the current embedder's version, embeds them in CPU-sized batches outside any
lock, and writes back only `vector` and `embedder` (an update of matched rows, so a row erased
meanwhile is not brought back). The rows pass is a background thread of the process that owns the
log (the gateway); the embedding pass is a low-priority worker process that owner starts
(`traces.embed_worker`, so embedding never holds the gateway's GIL), or with `embed_worker` off a
second thread. A reader that needs embeddings (curation) calls `embed_pending` for just the rows
it reads: the worker is asked to embed those first and the reader waits for them (the thread
pass: the reader embeds them itself, after the batch in hand). Only the log's owner (and its
worker, for vectors) writes to the traces table (another process borrows ownership while no
writer is alive, or waits for the owner), so two processes never insert the same rows at once;
the table lock (a `flock` beside the log) keeps the owner's inserts and its worker's updates from
committing at once.

`backlog` says how far behind both passes are, from counters kept as they go (no I/O), for the
gateway's `/metrics`; past the configured bound it says so and logs a warning. Nothing is ever
dropped: the log keeps every record until LanceDB holds it.

It knows the store's tables, log and lock, nothing of accounts, consent or erasure.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
from pydantic import ValidationError

from traces.locks import WritersLock
from traces.schemas import Trace

if TYPE_CHECKING:
    from traces.store import TraceStore

log = logging.getLogger("shoal.traces")
EMBED_COLUMNS = ("request_id", "vector", "embedder")
WORKER_RESTART_S = 2.0
"""The least time between two starts of the embedding worker."""


def embed_text(row: dict) -> str:
    """What a trace is embedded as: its last user message and the completion, 2,000 characters."""
    try:
        messages = json.loads(row["messages_json"])
        last = next((m.get("content") or "" for m in reversed(messages)
                     if m.get("role") == "user"), "")
    except (json.JSONDecodeError, TypeError, AttributeError):
        last = ""
    if not isinstance(last, str):  # OpenAI content parts
        last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
    return f"{last}\n{row['completion']}"[:2000]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


EMBEDDER_MARK = ".embedder"
"""In the log directory: the pid of the owner whose embedding pass runs. A reader in another
process waits for that pass (up to `embed_wait_s`) only when the mark names the live owner."""


class Ingestion:
    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.ingested = 0
        """Rows this process added to LanceDB."""
        self.embedded = 0
        """Rows this process embedded."""
        self._unembedded: int | None = None
        self._embed_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._warned = False
        self._embedder = None
        self.worker = None
        """The embedding worker process (`traces.embed_worker.EmbedWorker`) while one runs."""
        self._workers_embedded = 0
        """Rows embedded by this process's earlier (dead) workers."""
        self._table_lock = WritersLock(store.log.directory / ".traces-table.lock")
        """Held exclusive by each commit to the traces table, in any process."""

    # rows --------------------------------------------------------------------------------------

    def flush(self) -> int:
        """Ingest the log into LanceDB rows (no embeddings); returns rows added here.

        Only the log's owner writes rows: it rotates, ingests and drops segments. A process that
        does not own the log borrows ownership when no writer is alive, and otherwise waits
        (up to `read_wait_s`) until the owner has ingested every segment there was, so that it
        reads what was logged before it asked without ever writing beside the owner."""
        log_ = self.store.log
        borrowed = not log_.owned and log_.acquire()
        if not log_.owned:
            self._wait_for_owner(log_.segments())
            return 0
        try:
            return self._flush_owned()
        finally:
            if borrowed:
                log_.release()

    def _wait_for_owner(self, segments: list[Path]) -> None:
        deadline = time.monotonic() + self.store.config.read_wait_s
        while any(s.exists() for s in segments) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _flush_owned(self) -> int:
        store = self.store
        with store.log.writers.shared(), store.write_lock, self._table_lock.exclusive():
            added = 0  # no erasure, here or elsewhere, and no worker's commit meanwhile
            for segment in store.log.rotate():
                rows = self._read(segment)
                for i in range(0, rows.num_rows, store.config.batch_size):
                    added += self._insert(rows.slice(i, store.config.batch_size))
                store.log.drop(segment)
            self.ingested += added
            if added and self._unembedded is not None:
                self._unembedded += added
            return added

    def _read(self, segment: Path) -> pa.Table:
        """A segment as Arrow rows of the traces table. Arrow's JSON reader parses it in C++; a
        segment it refuses (a torn last line after a crash, a malformed record) is read line by
        line and each record validated, and records that fail are set aside in `rejected.jsonl`
        next to the log, never lost and never ingested."""
        schema = self.store.schemas["traces"]
        logged = pa.schema([f for f in schema if f.name not in EMBED_COLUMNS[1:]])
        try:
            table = pa_json.read_json(segment, parse_options=pa_json.ParseOptions(
                explicit_schema=logged, unexpected_field_behavior="ignore"))
            required = [n for n, f in Trace.model_fields.items() if f.is_required()]
            if all(table.column(n).null_count == 0 for n in required):
                for name in EMBED_COLUMNS[1:]:
                    table = table.append_column(schema.field(name),
                                                pa.nulls(table.num_rows, schema.field(name).type))
                return table.select(schema.names)  # the table's column order
        except FileNotFoundError:  # the owner ingested and dropped it meanwhile
            return schema.empty_table()
        except pa.ArrowInvalid:
            pass
        rows, rejected = [], []
        for record in self.store.log.read(segment):
            try:
                rows.append(Trace.model_validate(record).model_dump())
            except ValidationError as exc:
                rejected.append({"record": record, "error": str(exc)[:500]})
        if rejected and self.store.log.owned:
            log.error("%d malformed trace records in %s set aside in rejected.jsonl",
                      len(rejected), segment.name)
            with open(segment.parent / "rejected.jsonl", "a") as out:
                out.writelines(json.dumps(r, default=str) + "\n" for r in rejected)
        return pa.Table.from_pylist(rows, schema=schema)

    def _insert(self, rows: pa.Table) -> int:
        if rows.num_rows == 0:
            return 0
        table = self.store.tables["traces"]
        before = table.count_rows()
        table.merge_insert("request_id").when_not_matched_insert_all().execute(
            rows, on_bad_vectors="null")
        return table.count_rows() - before

    # embeddings --------------------------------------------------------------------------------

    @property
    def embedder(self):
        if self._embedder is None:
            from traces.embedders import load

            self._embedder = load(self.store.config.embedder, self.store.config.embedder_cache)
        return self._embedder

    def _stale(self, where: str | None) -> str:
        stale = f"(embedder IS NULL OR embedder != {_quote(self.embedder.version)})"
        return f"{stale} AND ({where})" if where else stale

    def embed_pending(self, where: str | None = None, limit: int | None = None) -> int:
        """Embed rows that lack the current embedder's vector (only those `where` selects, at
        most `limit`), batch by batch; returns how many were embedded here.

        Like rows, vectors are written only by the log's owner (or its worker): the owner asks its
        live worker for these rows first and waits for them; another process borrows ownership
        when no writer is alive, and otherwise waits (up to `embed_wait_s`) for the owner's
        embedding pass to reach the rows `where` selects."""
        log_ = self.store.log
        if log_.owned and self.worker is not None and self.worker.alive:
            self.worker.ask(where)
            self._wait_for_embeddings(where)
            return 0
        borrowed = not log_.owned and log_.acquire()
        if not log_.owned:
            if self._owner_embeds():  # else nothing would come: the caller embeds what it needs
                self._wait_for_embeddings(where)
            return 0
        try:
            return self.embed_rows(where, limit)
        finally:
            if borrowed:
                log_.release()

    def _owner_embeds(self) -> bool:
        """Whether the log's live owner runs an embedding pass: its pid is in both `.owner`
        (whose lock it holds) and the `.embedder` mark its `start()` left."""
        directory = self.store.log.directory
        try:
            owner = (directory / ".owner").read_text().strip()
            return bool(owner) and (directory / EMBEDDER_MARK).read_text().strip() == owner
        except OSError:
            return False

    def _wait_for_embeddings(self, where: str | None) -> None:
        deadline = time.monotonic() + self.store.config.embed_wait_s
        while (self.store.tables["traces"].count_rows(self._stale(where))
               and time.monotonic() < deadline):
            time.sleep(0.2)

    def embed_rows(self, where: str | None = None, limit: int | None = None) -> int:
        """The embedding pass itself, for the one writer of vectors (the owner or its worker):
        rows `where` selects without the current vector, at most `limit`, batch by batch."""
        done = 0
        while limit is None or done < limit:
            batch = self.store.config.embed_batch if limit is None else min(
                self.store.config.embed_batch, limit - done)
            with self._embed_lock:  # a reader waits for the batch in hand, then its own
                n = self._embed_batch(where, batch)
            if n == 0:
                break
            done += n
        return done

    def _embed_batch(self, where: str | None, batch: int) -> int:
        store = self.store
        rows = (store.tables["traces"].search().where(self._stale(where))
                .select(["request_id", "messages_json", "completion"]).limit(batch).to_list())
        if not rows:
            return 0
        vectors = self.embedder.embed([embed_text(r) for r in rows])
        schema = pa.schema([store.schemas["traces"].field(c) for c in EMBED_COLUMNS])
        flat = pa.array(vectors.astype("float32", copy=False).ravel())
        update = pa.table([pa.array([r["request_id"] for r in rows]),
                           pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
                           pa.array([self.embedder.version] * len(rows))], schema=schema)
        # short: the vectors are ready; erasure (of any process) may have run meanwhile
        with store.log.writers.shared(), store.write_lock, self._table_lock.exclusive():
            store.tables["traces"].merge_insert("request_id").when_matched_update_all().execute(
                update)
        self.embedded += len(rows)
        if self._unembedded is not None:
            self._unembedded = max(0, self._unembedded - len(rows))
        return len(rows)

    @property
    def unembedded(self) -> int | None:
        """Rows without the current vector at the last count, less those embedded since."""
        return self._unembedded

    def count_unembedded(self) -> int:
        self._unembedded = self.store.tables["traces"].count_rows(self._stale(None))
        return self._unembedded

    # backlog -----------------------------------------------------------------------------------

    def backlog(self) -> dict:
        """How far ingestion is behind, without touching disk: log records not yet rows, rows
        not yet embedded (as of the embedding pass's last count), and the configured bound."""
        config = self.store.config
        logged = self.store.log.backlog() if self.store.log.owned else None
        unembedded, embedded = self._unembedded, self.embedded
        if self.worker is not None:  # the worker's counters, kept in shared memory
            unembedded = self.worker.unembedded
            embedded += self._workers_embedded + self.worker.embedded
        behind = max(logged or 0, unembedded or 0)
        over = behind > config.backlog_bound
        if over and not self._warned:
            log.warning("trace ingestion backlog %d is over its bound %d (log %s, unembedded %s); "
                        "nothing is dropped, but traces reach curation late", behind,
                        config.backlog_bound, logged, unembedded)
        self._warned = over
        return {"log_records": logged, "unembedded_rows": unembedded,
                "bound": config.backlog_bound, "over_bound": over,
                "ingested": self.ingested, "embedded": embedded,
                "embedder": config.embedder if config.embed else None}

    # background --------------------------------------------------------------------------------

    def start(self) -> None:
        loops = [("trace-writer", self._write_loop)]
        if self.store.config.embed:  # readers in other processes may wait for this pass
            (self.store.log.directory / EMBEDDER_MARK).write_text(str(os.getpid()))
        if self.store.config.embed and self.store.config.embed_worker:
            self._start_worker()
        elif self.store.config.embed:
            loops.append(("trace-embedder", self._embed_loop))
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        mark = self.store.log.directory / EMBEDDER_MARK
        try:
            if mark.read_text().strip() == str(os.getpid()):
                mark.unlink()
        except OSError:
            pass
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self.worker is not None:
            self.worker.stop()
            self._workers_embedded += self.worker.embedded
            self.worker = None

    def _start_worker(self) -> None:
        from traces.embed_worker import EmbedWorker

        self.worker = EmbedWorker(self.store.config)

    def _keep_worker(self) -> None:
        """Start a new worker when the last one died (killed, out of memory), at most every
        `WORKER_RESTART_S`; its rows wait unembedded meanwhile, nothing is lost."""
        worker = self.worker
        if worker is None or worker.alive or time.monotonic() - worker.started < WORKER_RESTART_S:
            return
        log.warning("the trace embedding worker %s exited (%s); starting another", worker.pid,
                    worker.process.exitcode)
        worker.stop(timeout=0)  # reaps it and closes its pipe
        self._workers_embedded += worker.embedded
        self._start_worker()

    def _write_loop(self) -> None:
        while not self._stop.wait(self.store.config.flush_interval_s):
            try:
                self.flush()
                self._keep_worker()
                self.backlog()  # warns once when the bound is crossed
            except Exception:  # keep the log; the next round retries
                log.exception("trace ingestion failed")

    def _embed_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.count_unembedded()
                if self.embed_pending(limit=self.store.config.embed_batch) == 0:
                    self._stop.wait(self.store.config.flush_interval_s)
            except Exception:  # rows stay unembedded; the next round retries
                log.exception("trace embedding failed")
                self._stop.wait(5 * self.store.config.flush_interval_s)
            time.sleep(0)


def describe(backlog: dict) -> str:
    """One line for `shoal status`: the backlog of a gateway's `/metrics` (`Ingestion.backlog`)."""
    state = "OVER its bound" if backlog["over_bound"] else "within its bound"
    return (f"trace ingestion: {backlog['log_records']} logged, not yet rows; "
            f"{backlog['unembedded_rows']} rows not yet embedded ({backlog['embedder']}); "
            f"{state} of {backlog['bound']}; {backlog['ingested']} ingested, "
            f"{backlog['embedded']} embedded since start")
