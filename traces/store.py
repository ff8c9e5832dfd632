"""The trace store: accounts and keys, consent grants, durable capture, feedback, export, erasure.

LanceDB holds the tables (a local directory by default, any LanceDB URI by configuration); the
durable log (`traces.log`) makes each trace safe before its response returns; background threads
move logged traces into LanceDB in batches, idempotently by request id, and embed the rows later in
a pass of their own (`traces.ingest`; a low-priority worker process, `traces.embed_worker`), so
neither capture nor reads ever wait for an embedding.
The tables' schemas derive from the row models (`traces/schemas.py`, via `traces/tables.py`);
deciding whether a request becomes a trace is `traces/capture.py`'s job.

Consent is data: a trace is recorded only for a contributor with an active grant, and the row
carries that grant. Erasure is real: rows are deleted from every table, the tables are rewritten and
their old versions cleaned up (no file keeps the bytes), log records are removed, datasets that
used the traces are marked for rebuild, `erasure_hooks` erase what others derived (curated
datasets and caches, drafter state), and a receipt counts what went from each. It runs in any
process, under the writers lock held exclusive (`traces.locks`), which every writer of every
process holds shared.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from traces.exceptions import AuthError, Forbidden, InvalidInput, LogOwned, NotFound
from traces.ingest import Ingestion
from traces.log import DurableLog
from traces.schemas import (ROLES, SCOPES, Account, ApiKey, DatasetMember, Feedback, FeedbackIn,
                            Grant, RebuildMark, Receipt, Trace)

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def now() -> datetime:
    return datetime.now(UTC)


def _id(value: str, what: str) -> str:
    if not ID_RE.match(value or ""):
        raise InvalidInput(f"{what} {value!r} is not a valid id")
    return value


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Erased:
    """What one erasure removed, as its hooks see it."""

    contributor_id: str
    request_ids: list[str]
    """The trace rows erased (records only in the log are not listed: nothing derived them)."""
    datasets: list[str]
    """Datasets that held any of them (marked for rebuild)."""


@dataclass
class TraceStoreConfig:
    uri: str
    """LanceDB URI (a local directory by default)."""
    log_dir: Path
    """Where the durable log lives (always a local disk)."""
    batch_size: int = 4096
    """Log records per LanceDB insert (one commit, one fragment each: fewer, larger is faster)."""
    flush_interval_s: float = 0.5
    """How often the background writer moves the log into LanceDB."""
    embed: bool = True
    """Embed rows in the background (and for curation); off: rows keep a null vector."""
    embedder: str = "static"
    """Which embedder (`traces.embedders.NAMES`); its version is stored with every vector."""
    embedder_cache: Path | None = None
    """Where built embedders are kept (None: ~/.cache/shoal/embedders)."""
    embed_worker: bool = True
    """Embed in a low-priority worker process the log's owner starts (`traces.embed_worker`),
    off the owner's GIL; off: in a background thread of the owner."""
    embed_niceness: int = 10
    """How much lower than the owner's the worker's CPU priority is (`os.nice`), once it has
    loaded its embedder: embedding takes only CPU that serving leaves."""
    embed_batch: int = 512
    """Rows per embedding batch: large enough to amortise a pass, small enough to write often."""
    read_wait_s: float = 5.0
    """How long a read in a process that does not own the log waits for the owner to ingest
    what was logged before it (the owner flushes every `flush_interval_s`)."""
    embed_wait_s: float = 120.0
    """How long curation in such a process waits for the owner to embed the rows it reads;
    rows still without a vector then reach semantic dedup without one (and are kept)."""
    backlog_bound: int = 50_000
    """Log records or unembedded rows beyond which `/metrics` reports the backlog over its bound
    (and a warning is logged). Nothing is dropped; the bound only makes the lag visible."""

    def __post_init__(self) -> None:
        from traces.embedders import NAMES

        if self.embedder not in NAMES:
            raise InvalidInput(f"embedder {self.embedder!r} is not one of {', '.join(NAMES)}")
        for name in ("batch_size", "embed_batch", "backlog_bound"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, not {getattr(self, name)}")
    auth_cache_s: float = 2.0
    """How long a key lookup is trusted before revocation is re-checked."""


class TraceStore:
    def __init__(self, config: TraceStoreConfig) -> None:
        import lancedb

        from traces.tables import SCHEMAS

        self.config = config
        self.schemas = SCHEMAS
        """Each table's Arrow schema, derived from its row model (traces/tables.py)."""
        # readers in other processes (gateway, CLI) must see each other's writes at once
        self.db = lancedb.connect(config.uri, read_consistency_interval=timedelta(0))
        existing = set(self.db.table_names())
        self.tables = {name: (self.db.open_table(name) if name in existing else
                              self.db.create_table(name, schema=schema))
                       for name, schema in SCHEMAS.items()}
        for name, table in self.tables.items():
            missing = [f for f in SCHEMAS[name] if f.name not in table.schema.names]
            if missing:  # a column added since the table was created (traces.embedder)
                table.add_columns(pa.schema(missing))
        self.log = DurableLog.open(config.log_dir)
        self.write_lock = threading.Lock()
        """Serialises this process's writes to the traces table: ingestion, embeddings, erasure."""
        self.ingestion = Ingestion(self)
        self._auth_cache: dict[str, tuple[float, Account]] = {}
        self._grant_cache: dict[str, tuple[float, Grant | None]] = {}
        self.erasure_hooks: list[Callable[[Erased], dict[str, int]]] = []
        """Called by each erasure, under its lock, to erase what this store does not hold (a
        gateway's drafter state, curated datasets, caches); the counts they return go in the
        receipt."""

    # queries helpers ---------------------------------------------------------------------------

    def _rows(self, table: str, where: str | None = None) -> list[dict]:
        query = self.tables[table].search()
        return (query.where(where) if where else query).limit(None).to_list()

    # accounts and keys -------------------------------------------------------------------------

    def create_account(self, role: str, name: str = "") -> Account:
        if role not in ROLES:
            raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
        account = Account(account_id=uuid.uuid4().hex[:16], role=role, name=name,
                          created_at=now())
        self.tables["accounts"].add([account.model_dump()])
        return account

    def create_key(self, account_id: str) -> tuple[str, str]:
        """A new API key for an account: (key id, secret). The secret is shown once."""
        self.account(account_id)
        key_id = uuid.uuid4().hex[:12]
        secret = f"sk-shoal-{key_id}-{secrets.token_urlsafe(24)}"
        self.tables["api_keys"].add([ApiKey(key_id=key_id, account_id=account_id,
                                            key_hash=hash_key(secret),
                                            created_at=now()).model_dump()])
        return key_id, secret

    def revoke_key(self, key_id: str) -> None:
        _id(key_id, "key id")
        if not self._rows("api_keys", f"key_id = '{key_id}'"):
            raise NotFound(f"no API key {key_id}")
        self.tables["api_keys"].update(where=f"key_id = '{key_id}'", values={"revoked": True})
        self._auth_cache.clear()

    def keys(self) -> list[dict]:
        accounts = {a["account_id"]: a for a in self._rows("accounts")}
        return [{"key_id": k["key_id"], "account_id": k["account_id"],
                 "role": accounts.get(k["account_id"], {}).get("role", "?"),
                 "name": accounts.get(k["account_id"], {}).get("name", ""),
                 "revoked": k["revoked"]} for k in self._rows("api_keys")]

    def account(self, account_id: str) -> Account:
        rows = self._rows("accounts", f"account_id = '{_id(account_id, 'account id')}'")
        if not rows:
            raise NotFound(f"no account {account_id}")
        return Account.model_validate(rows[0])

    def authenticate(self, secret: str) -> Account:
        cached = self._auth_cache.get(secret)
        if cached and time.monotonic() - cached[0] < self.config.auth_cache_s:
            return cached[1]
        rows = self._rows("api_keys", f"key_hash = '{hash_key(secret)}'")
        if not rows or rows[0]["revoked"]:
            raise AuthError("invalid or revoked API key")
        account = self.account(rows[0]["account_id"])
        self._auth_cache[secret] = (time.monotonic(), account)
        return account

    # grants ------------------------------------------------------------------------------------

    def create_grant(self, contributor: Account, scopes: list[str], days: float) -> Grant:
        if contributor.role != "contributor":
            raise Forbidden("only contributors grant consent")
        bad = [s for s in scopes if s not in SCOPES]
        if not scopes or bad:
            raise InvalidInput(f"scopes must be some of {', '.join(SCOPES)}; got {scopes}")
        if not 0 < days <= 3650:
            raise InvalidInput(f"expiry of {days} days must be between 0 and 3650")
        grant = Grant(grant_id=uuid.uuid4().hex[:16], contributor_id=contributor.account_id,
                      scopes=sorted(set(scopes)), created_at=now(),
                      expires_at=now() + timedelta(days=days))
        with self.log.writers.shared():  # never lost to an erasure's rewrite
            self.tables["grants"].add([grant.model_dump()])
        self._grant_cache.pop(contributor.account_id, None)
        return grant

    def grants(self, contributor_id: str) -> list[Grant]:
        return [Grant.model_validate(r) for r in self._rows(
            "grants", f"contributor_id = '{_id(contributor_id, 'contributor id')}'")]

    def revoke_grant(self, contributor: Account, grant_id: str) -> None:
        mine = {g.grant_id for g in self.grants(contributor.account_id)}
        if _id(grant_id, "grant id") not in mine:
            raise NotFound(f"no grant {grant_id} of yours")
        with self.log.writers.shared():
            self.tables["grants"].update(where=f"grant_id = '{grant_id}'",
                                         values={"revoked": True})
        self._grant_cache.pop(contributor.account_id, None)

    def active_grant(self, contributor_id: str) -> Grant | None:
        """The newest active grant. Cached for `auth_cache_s` (so a revocation made by another
        process takes effect within that time); expiry is checked on every call."""
        t = now()
        cached = self._grant_cache.get(contributor_id)
        if cached and time.monotonic() - cached[0] < self.config.auth_cache_s:
            grant = cached[1]
        else:
            active = [g for g in self.grants(contributor_id) if g.active(t)]
            grant = max(active, key=lambda g: g.created_at) if active else None
            self._grant_cache[contributor_id] = (time.monotonic(), grant)
        return grant if grant is not None and grant.active(t) else None

    def drafting_traces(self, limit: int = 5000) -> list[dict]:
        """The newest traces whose grant is active and includes `drafting` (what a gateway's
        shared suffix index may learn from), without vectors."""
        at = now()
        allowed = sorted(g["grant_id"] for g in self._rows("grants")
                         if not g["revoked"] and g["expires_at"] > at and "drafting" in g["scopes"])
        if not allowed:
            return []
        rows = self._trace_rows(f"grant_id IN ({', '.join(repr(g) for g in allowed)}) "
                                f"AND grant_expires_at > {_timestamp(at)}")
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        return rows[:limit]

    def inactive_grants(self, grant_ids: set[str]) -> set[str]:
        """Those of `grant_ids` that are revoked, expired or erased."""
        at = now()
        active = {g["grant_id"] for g in self._rows("grants")
                  if not g["revoked"] and g["expires_at"] > at}
        return set(grant_ids) - active

    def forget_cached_grant(self, contributor_id: str) -> None:
        """Drop the cached grant of a contributor (another process erased or revoked it)."""
        self._grant_cache.pop(contributor_id, None)

    def receipts_since(self, after: datetime) -> list[dict]:
        """Erasure receipts written after `after` (by any process), oldest first."""
        rows = self._rows("receipts", f"created_at > {_timestamp(after)}")
        return sorted(rows, key=lambda r: r["created_at"])

    # capture -----------------------------------------------------------------------------------

    def record(self, trace: Trace) -> None:
        """Make a trace durable (fsync'd log). Ingestion into LanceDB happens in the background."""
        self.log.append(trace.model_dump(mode="json"))

    def start(self, wait_s: float = 30.0) -> None:
        """Own the log (waiting up to `wait_s` for a process that still holds it), replay
        whatever a crash left there, then ingest and embed in the background."""
        deadline = time.monotonic() + wait_s
        while not self.log.acquire():
            if time.monotonic() > deadline:
                raise LogOwned(f"the trace log in {self.log.directory} is owned by another "
                               f"process after {wait_s} s")
            time.sleep(0.2)
        self.flush()
        self.ingestion.start()

    def stop(self) -> None:
        self.ingestion.stop()
        self.flush()

    def flush(self) -> int:
        """Make every logged trace a LanceDB row (without its embedding); returns rows added."""
        return self.ingestion.flush()

    def embed_pending(self, where: str | None = None) -> int:
        """Embed the rows `where` selects that lack the current embedder's vector."""
        return self.ingestion.embed_pending(where)

    def backlog(self) -> dict:
        """The ingestion backlog and its bound (`traces.ingest.Ingestion.backlog`)."""
        return self.ingestion.backlog()

    # reading -----------------------------------------------------------------------------------

    def get(self, request_id: str) -> dict:
        """One trace, without its vector. Reads flush the log into rows (cheap, so a caller sees
        its own writes) and never embed."""
        self.flush()
        rows = self._trace_rows(f"request_id = '{_id(request_id, 'trace id')}'")
        if not rows:
            raise NotFound(f"no trace {request_id}")
        return rows[0]

    def _trace_rows(self, where: str | None) -> list[dict]:
        """Trace rows without the vector column (never read for listing)."""
        columns = [f.name for f in self.schemas["traces"] if f.name != "vector"]
        query = self.tables["traces"].search().select(columns)
        return (query.where(where) if where else query).limit(None).to_list()

    def query(self, *, contributor_id: str | None = None, since: datetime | None = None,
              until: datetime | None = None, model_version: str | None = None,
              min_rating: int | None = None, limit: int = 1000) -> list[dict]:
        """Traces by contributor, time range, model version and rating, newest first."""
        self.flush()
        where = []
        if contributor_id:
            where.append(f"contributor_id = '{_id(contributor_id, 'contributor id')}'")
        if model_version:
            if not re.match(r"^[A-Za-z0-9:]+$", model_version):
                raise InvalidInput(f"model version {model_version!r} is malformed")
            where.append(f"model_version = '{model_version}'")
        if since:
            where.append(f"created_at >= {_timestamp(since)}")
        if until:
            where.append(f"created_at < {_timestamp(until)}")
        if min_rating is not None:
            rated = sorted({f["request_id"] for f in self._rows(
                "feedback", f"rating >= {int(min_rating)}")})
            if not rated:
                return []
            where.append(f"request_id IN ({', '.join(repr(r) for r in rated)})")
        rows = self._trace_rows(" AND ".join(where) or None)
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        return rows[:limit]

    def export_jsonl(self, contributor_id: str) -> str:
        rows = self.query(contributor_id=contributor_id, limit=1_000_000)
        lines = [json.dumps({"type": "trace", **r}, default=str) for r in rows]
        lines += [json.dumps({"type": "feedback", **f}, default=str)
                  for f in self.feedback(contributor_id)]
        return "\n".join(lines) + ("\n" if lines else "")

    def feedback(self, contributor_id: str) -> list[dict]:
        """Every feedback row a contributor gave, newest first."""
        rows = self._rows("feedback", f"contributor_id = '{_id(contributor_id, 'contributor id')}'")
        return sorted(rows, key=lambda r: r["created_at"], reverse=True)

    def datasets_of(self, contributor_id: str) -> dict[str, int]:
        """Dataset id → how many of a contributor's traces it holds (the lineage curation
        recorded with `add_dataset_members`)."""
        mine = {r["request_id"] for r in self.query(contributor_id=contributor_id,
                                                    limit=1_000_000)}
        counts: dict[str, int] = {}
        for m in self._rows("dataset_members"):
            if m["request_id"] in mine:
                counts[m["dataset_id"]] = counts.get(m["dataset_id"], 0) + 1
        return dict(sorted(counts.items()))

    # feedback ----------------------------------------------------------------------------------

    def add_feedback(self, caller: Account, body: FeedbackIn) -> dict:
        trace = self.get(body.request_id)
        if trace["contributor_id"] != caller.account_id:
            raise Forbidden("feedback only on your own traces")
        if body.rating is None and not body.correction and not (body.chosen and body.rejected):
            raise InvalidInput("give a rating, a chosen/rejected pair, or a correction")
        row = Feedback(feedback_id=uuid.uuid4().hex[:16], request_id=body.request_id,
                       contributor_id=caller.account_id, rating=body.rating,
                       chosen=body.chosen or "", rejected=body.rejected or "",
                       correction=body.correction or "", created_at=now()).model_dump()
        with self.log.writers.shared():
            self.tables["feedback"].add([row])
        return row

    # curation ----------------------------------------------------------------------------------

    def curation_snapshot(self, embeddings: bool | None = None) -> dict:
        """What curation may read now: traces whose grant is still active, oldest first, their
        feedback, and the table version read (for the data card).

        With `embeddings` (default: the store's `embed`), the rows it returns that lack the
        current embedder's vector are embedded first, and only those: by this process when it
        owns the log (stored), else by the owner's pass when it runs one (waited for), and what
        is still missing then is embedded here for this read alone. A vector from any other
        embedder is never handed out, so semantic dedup never compares two embedders' vectors."""
        self.flush()
        at = now()
        active = sorted(g["grant_id"] for g in self._rows("grants")
                        if not g["revoked"] and g["expires_at"] > at)
        readable = (f"grant_id IN ({', '.join(repr(g) for g in active)}) "
                    f"AND grant_expires_at > {_timestamp(at)}") if active else "false"
        embed = self.config.embed if embeddings is None else embeddings
        if embed and active:
            self.ingestion.embed_pending(readable)
        version = self.ingestion.embedder.version if embed else None
        total = self.tables["traces"].count_rows()
        traces = sorted(self._rows("traces", readable),
                        key=lambda r: (r["created_at"], r["request_id"]))
        if embed:  # rows the owner has not embedded (yet, or at all): embedded here, not stored
            self._embed_in_memory([r for r in traces if r.get("embedder") != version], version)
        for r in traces:
            if r.get("embedder") != version:
                r["vector"] = None
        ids = {r["request_id"] for r in traces}
        return {"traces": traces,
                "feedback": [f for f in self._rows("feedback") if f["request_id"] in ids],
                "source": {"uri": str(self.config.uri), "table": "traces",
                           "version": self.tables["traces"].version},
                "excluded_inactive_grant": total - len(traces)}

    def _embed_in_memory(self, rows: list[dict], version: str) -> None:
        """Give `rows` the current embedder's vectors for this read only (vectors are written
        by the log's owner alone), in batches of `embed_batch`."""
        from traces.ingest import embed_text

        batch = self.config.embed_batch
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            vectors = self.ingestion.embedder.embed([embed_text(r) for r in part])
            for r, v in zip(part, vectors):
                r["vector"], r["embedder"] = [float(x) for x in v], version

    def add_dataset_members(self, dataset_id: str, request_ids: list[str]) -> None:
        """Record which traces went into a dataset (erasure marks the dataset for rebuild)."""
        if request_ids:
            with self.log.writers.shared():
                self.tables["dataset_members"].add([
                    DatasetMember(dataset_id=dataset_id, request_id=r).model_dump()
                    for r in sorted(set(request_ids))])

    def datasets_marked_for_rebuild(self) -> list[str]:
        return sorted({r["dataset_id"] for r in self._rows("datasets_to_rebuild")})

    def forget_dataset(self, dataset_id: str) -> None:
        """Drop a dataset's membership rows and rebuild marks (after its files are deleted)."""
        if not re.match(r"^[A-Za-z0-9_.-]{1,80}$", dataset_id):
            raise InvalidInput(f"dataset id {dataset_id!r} is malformed")
        for name in ("dataset_members", "datasets_to_rebuild"):
            self.tables[name].delete(f"dataset_id = '{dataset_id}'")

    # erasure -----------------------------------------------------------------------------------

    def delete_trace(self, caller: Account, request_id: str) -> dict:
        trace = self.get(request_id)
        if trace["contributor_id"] != caller.account_id and caller.role != "maintainer":
            raise Forbidden("you can delete only your own traces")
        return self._erase(trace["contributor_id"], f"request_id = '{request_id}'",
                           lambda r: r.get("request_id") == request_id)

    def erase_contributor(self, contributor_id: str) -> dict:
        """Erase every trace, feedback row and grant of a contributor; returns the receipt."""
        _id(contributor_id, "contributor id")
        return self._erase(contributor_id, f"contributor_id = '{contributor_id}'",
                           lambda r: r.get("contributor_id") == contributor_id, grants=True)

    def _erase(self, contributor_id: str, where: str, selects, grants: bool = False) -> dict:
        """Erase under the writers lock held exclusive: no process appends, ingests or writes
        the store meanwhile (traces/locks.py), so nothing erased is written back afterwards."""
        with self.log.writers.exclusive(), self.write_lock:
            log_removed = self.log.erase(selects)
            ids = [r["request_id"] for r in self._rows("traces", where)]
            members = self._rows("dataset_members")
            datasets = sorted({m["dataset_id"] for m in members if m["request_id"] in set(ids)})
            counts = {"traces": len(ids), "log_records": log_removed}
            id_list = ", ".join(f"'{i}'" for i in ids)
            targets = [("traces", where)]
            if ids:
                targets += [("feedback", f"request_id IN ({id_list})"),
                             ("dataset_members", f"request_id IN ({id_list})")]
            if grants:
                targets.append(("grants", f"contributor_id = '{contributor_id}'"))
                self._grant_cache.pop(contributor_id, None)
            versions = {}
            for name, predicate in targets:
                counts.setdefault(name, len(self._rows(name, predicate)))
                self.tables[name].delete(predicate)
                versions[name] = self._rewrite(name)
            for d in datasets:
                self.tables["datasets_to_rebuild"].add([RebuildMark(
                    dataset_id=d, reason="erasure", marked_at=now()).model_dump()])
            failed = []
            for hook in self.erasure_hooks:  # derived state this store does not hold
                try:
                    counts.update(hook(Erased(contributor_id, ids, datasets)))
                except Exception as exc:  # say so in the receipt; the rows are gone already
                    failed.append(f"{getattr(hook, '__qualname__', hook)}: {exc}")
            receipt = {"receipt_id": uuid.uuid4().hex[:16], "contributor_id": contributor_id,
                       "erased": counts, "log_records_removed": log_removed,
                       "old_table_versions_removed": versions,
                       "datasets_marked_for_rebuild": datasets, "at": now().isoformat(),
                       "table_versions_after": {n: self.tables[n].version for n, _ in targets},
                       "incomplete": failed}
            self.tables["receipts"].add([Receipt(
                receipt_id=receipt["receipt_id"], contributor_id=contributor_id,
                body=json.dumps(receipt), created_at=now()).model_dump(by_alias=True)])
            return receipt

    def _rewrite(self, name: str) -> int:
        """Write the table anew and drop every older version, so deleted rows leave no bytes;
        returns how many old versions were dropped."""
        old_versions = len(self.tables[name].list_versions())
        remaining = self.tables[name].to_arrow()
        self.tables[name] = self.db.create_table(name, remaining, schema=self.schemas[name],
                                                 mode="overwrite", on_bad_vectors="null")
        import warnings

        with warnings.catch_warnings():  # deliberate: erasure must not keep any old version
            warnings.simplefilter("ignore", UserWarning)
            self.tables[name].optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
        return max(0, old_versions + 1 - len(self.tables[name].list_versions()))



TIMESTAMP_RANGE = (datetime(1678, 1, 1), datetime(2262, 1, 1))
"""Times DataFusion's nanosecond timestamps can hold; a bound outside is clamped to it (no trace
is older or newer, so the query selects the same rows)."""


def _timestamp(at: datetime) -> str:
    """A LanceDB (DataFusion) timestamp literal for `at`, in UTC; a naive time is taken as UTC."""
    low, high = (bound.replace(tzinfo=UTC) for bound in TIMESTAMP_RANGE)
    at = min(max(at if at.tzinfo else at.replace(tzinfo=UTC), low), high)  # before converting:
    at = at.astimezone(UTC).replace(tzinfo=None)  # 0001-01-01 east of UTC is no UTC time at all
    return f"TIMESTAMP '{at.year:04d}-{at:%m-%d %H:%M:%S.%f}'"
