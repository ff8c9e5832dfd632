"""The trace store: accounts and keys, consent grants, durable capture, feedback, export, erasure.

LanceDB holds the tables (a local directory by default, any LanceDB URI by configuration); the
durable log (`traces.log`) makes each trace safe before its response returns; a background thread
moves logged traces into LanceDB in batches, idempotently by request id, embedding them on the way.
The tables' schemas derive from the row models (`traces/schemas.py`, via `traces/tables.py`);
deciding whether a request becomes a trace is `traces/capture.py`'s job.

Consent is data: a trace is recorded only for a contributor with an active grant, and the row
carries that grant. Erasure is real: rows are deleted from every table, the tables are rewritten and
their old versions cleaned up (no file keeps the bytes), log records are removed, datasets that
used the traces are marked for rebuild, and a receipt says what went.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from traces.exceptions import AuthError, Forbidden, InvalidInput, NotFound
from traces.log import DurableLog
from traces.schemas import (EMBED_DIM, ROLES, SCOPES, Account, ApiKey, DatasetMember, Feedback,
                            FeedbackIn, Grant, RebuildMark, Receipt, Trace)

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def now() -> datetime:
    return datetime.now(UTC)


def _id(value: str, what: str) -> str:
    if not ID_RE.match(value or ""):
        raise InvalidInput(f"{what} {value!r} is not a valid id")
    return value


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class TraceStoreConfig:
    uri: str
    """LanceDB URI (a local directory by default)."""
    log_dir: Path
    """Where the durable log lives (always a local disk)."""
    batch_size: int = 256
    flush_interval_s: float = 0.5
    embed: bool = True
    """Embed traces on ingestion (the local MiniLM model)."""
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
        self.log = DurableLog(config.log_dir)
        self._ingest_lock = threading.Lock()
        self._auth_cache: dict[str, tuple[float, Account]] = {}
        self._grant_cache: dict[str, tuple[float, Grant | None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ingested = 0

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
        self.tables["grants"].update(where=f"grant_id = '{grant_id}'", values={"revoked": True})
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

    # capture -----------------------------------------------------------------------------------

    def record(self, trace: Trace) -> None:
        """Make a trace durable (fsync'd log). Ingestion into LanceDB happens in the background."""
        self.log.append(trace.model_dump(mode="json"))

    def start(self) -> None:
        """Replay whatever a crash left in the log, then ingest in the background."""
        self.flush()
        self._thread = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_interval_s):
            try:
                self.flush()
            except Exception:  # keep the log; the next round retries
                import logging

                logging.getLogger("shoal.traces").exception("trace ingestion failed")

    def flush(self) -> int:
        """Ingest every closed and current log segment into LanceDB; returns rows added."""
        with self._ingest_lock:
            added = 0
            for segment in self.log.rotate():
                records = list(self.log.read(segment))
                for i in range(0, len(records), self.config.batch_size):
                    added += self._ingest(records[i:i + self.config.batch_size])
                self.log.drop(segment)
            self.ingested += added
            return added

    def _ingest(self, records: list[dict]) -> int:
        if not records:
            return 0
        rows = [Trace.model_validate(r).model_dump() for r in records]
        if self.config.embed:
            from traces.embed import embed

            texts = [_embed_text(r) for r in rows]
            for row, vec in zip(rows, embed(texts)):
                row["vector"] = vec
        else:
            for row in rows:
                row["vector"] = [0.0] * EMBED_DIM
        table = self.tables["traces"]
        before = table.count_rows()
        (table.merge_insert("request_id").when_not_matched_insert_all()
         .execute(pa.Table.from_pylist(rows, schema=self.schemas["traces"])))
        return table.count_rows() - before

    # reading -----------------------------------------------------------------------------------

    def get(self, request_id: str) -> dict:
        self.flush()
        rows = self._rows("traces", f"request_id = '{_id(request_id, 'trace id')}'")
        if not rows:
            raise NotFound(f"no trace {request_id}")
        return rows[0]

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
        rows = self._rows("traces", " AND ".join(where) or None)
        if since:
            rows = [r for r in rows if r["created_at"] >= since]
        if until:
            rows = [r for r in rows if r["created_at"] < until]
        if min_rating is not None:
            rated = {f["request_id"] for f in self._rows("feedback")
                     if f["rating"] is not None and f["rating"] >= min_rating}
            rows = [r for r in rows if r["request_id"] in rated]
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        return [{k: v for k, v in r.items() if k != "vector"} for r in rows[:limit]]

    def export_jsonl(self, contributor_id: str) -> str:
        rows = self.query(contributor_id=contributor_id, limit=1_000_000)
        feedback = self._rows("feedback", f"contributor_id = '{contributor_id}'")
        lines = [json.dumps({"type": "trace", **r}, default=str) for r in rows]
        lines += [json.dumps({"type": "feedback", **f}, default=str) for f in feedback]
        return "\n".join(lines) + ("\n" if lines else "")

    # feedback ----------------------------------------------------------------------------------

    def add_feedback(self, caller: Account, body: FeedbackIn) -> dict:
        trace = self.get(body.trace_id)
        if trace["contributor_id"] != caller.account_id:
            raise Forbidden("feedback only on your own traces")
        if body.rating is None and not body.correction and not (body.chosen and body.rejected):
            raise InvalidInput("give a rating, a chosen/rejected pair, or a correction")
        row = Feedback(feedback_id=uuid.uuid4().hex[:16], request_id=body.trace_id,
                       contributor_id=caller.account_id, rating=body.rating,
                       chosen=body.chosen or "", rejected=body.rejected or "",
                       correction=body.correction or "", created_at=now()).model_dump()
        self.tables["feedback"].add([row])
        return row

    # curation ----------------------------------------------------------------------------------

    def curation_snapshot(self) -> dict:
        """What curation may read now: traces whose grant is still active, oldest first, their
        feedback, and the table version read (for the data card)."""
        self.flush()
        at = now()
        active = {g["grant_id"] for g in self._rows("grants")
                  if not g["revoked"] and g["expires_at"] > at}
        rows = self._rows("traces")
        traces = sorted((r for r in rows if r["grant_id"] in active and r["grant_expires_at"] > at),
                        key=lambda r: (r["created_at"], r["request_id"]))
        ids = {r["request_id"] for r in traces}
        return {"traces": traces,
                "feedback": [f for f in self._rows("feedback") if f["request_id"] in ids],
                "source": {"uri": str(self.config.uri), "table": "traces",
                           "version": self.tables["traces"].version},
                "excluded_inactive_grant": len(rows) - len(traces)}

    def add_dataset_members(self, dataset_id: str, request_ids: list[str]) -> None:
        """Record which traces went into a dataset (erasure marks the dataset for rebuild)."""
        if request_ids:
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
        with self._ingest_lock:
            log_removed = self.log.erase(selects)
            ids = [r["request_id"] for r in self._rows("traces", where)]
            members = self._rows("dataset_members")
            datasets = sorted({m["dataset_id"] for m in members if m["request_id"] in set(ids)})
            counts = {"traces": len(ids)}
            id_list = ", ".join(f"'{i}'" for i in ids)
            targets = [("traces", where)]
            if ids:
                targets += [("feedback", f"request_id IN ({id_list})"),
                             ("dataset_members", f"request_id IN ({id_list})")]
            if grants:
                targets.append(("grants", f"contributor_id = '{contributor_id}'"))
                self._grant_cache.pop(contributor_id, None)
            for name, predicate in targets:
                counts.setdefault(name, len(self._rows(name, predicate)))
                self.tables[name].delete(predicate)
                self._rewrite(name)
            for d in datasets:
                self.tables["datasets_to_rebuild"].add([RebuildMark(
                    dataset_id=d, reason="erasure", marked_at=now()).model_dump()])
            receipt = {"receipt_id": uuid.uuid4().hex[:16], "contributor_id": contributor_id,
                       "erased": counts, "log_records_removed": log_removed,
                       "datasets_marked_for_rebuild": datasets, "at": now().isoformat(),
                       "table_versions_after": {n: self.tables[n].version for n, _ in targets}}
            self.tables["receipts"].add([Receipt(
                receipt_id=receipt["receipt_id"], contributor_id=contributor_id,
                body=json.dumps(receipt), created_at=now()).model_dump(by_alias=True)])
            return receipt

    def _rewrite(self, name: str) -> None:
        """Write the table anew and drop every older version, so deleted rows leave no bytes."""
        remaining = self.tables[name].to_arrow()
        self.tables[name] = self.db.create_table(name, remaining, schema=self.schemas[name],
                                                 mode="overwrite")
        import warnings

        with warnings.catch_warnings():  # deliberate: erasure must not keep any old version
            warnings.simplefilter("ignore", UserWarning)
            self.tables[name].optimize(cleanup_older_than=timedelta(0), delete_unverified=True)


def _embed_text(row: dict) -> str:
    try:
        messages = json.loads(row["messages_json"])
        last = next((m.get("content") or "" for m in reversed(messages)
                     if m.get("role") == "user"), "")
    except (json.JSONDecodeError, TypeError):
        last = ""
    return f"{last}\n{row['completion']}"[:2000]
