"""The tracker: where nodes announce themselves and gateways look them up. It trusts no one.

`POST /announce` takes a node's signed record (`serve.records`) and keeps it only if it verifies
(id = hash of key, signature, clock within `MAX_SKEW_S`) and is newer than the last record of that
id, so nobody can announce an id without its key or replay a captured record. `GET /nodes` lists
the records heard from within `ttl_s`, exactly as signed, plus what the tracker adds: `signature`,
`status`, `last_seen` and the verdicts posted about the node (`verdict`: the latest, `verdicts`: one
per key). `POST /nodes/{id}/status` takes a verdict signed by one of `TrackerConfig.verdict_keys`;
anything else is refused (401 unsigned or malformed, 403 signed by another key or no keys
configured), so no request from a stranger takes a node out of any gateway.

Everything is bounded: request bodies, the number of records (`max_nodes`: records that are neither
listed nor replayable any more go first, then new ids are refused) and of verdicts. Any exception
while checking what a peer sent is a refusal, answered as `{"error": {"check", "message"}}`.

The tracker is only a relay: gateways verify every record and verdict again themselves
(`serve.discovery.TrackerDiscovery`). It knows nothing about models and never imports torch.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serve.config import TrackerConfig
from serve.exceptions import RecordRejected
from serve.discovery import check_record, check_verdict
from serve.records import MAX_SKEW_S, SIGNED_FIELDS

ANNOUNCE_STATUS = {"size": 413, "json": 400, "schema": 400, "span": 400, "clock": 400,
                   "stale": 400, "signature": 401, "node-id": 403, "replay": 409, "full": 429}
"""HTTP status of each refused announcement, by the check that failed (400 when not listed)."""
VERDICT_STATUS = {"size": 413, "authority": 403, "no-verdict-keys": 403, "clock": 403,
                  "node-mismatch": 403}
"""HTTP status of each refused verdict (401 when not listed: unsigned, bad signature,
malformed)."""
NO_VERDICT_KEYS = "this tracker accepts no verdicts (it was started without --verdict-key)"
PURGE_EVERY_S = 1.0
"""A full table is scanned for droppable records at most this often (a flood cannot make every
request a full scan)."""


@dataclass
class Entry:
    """One node's latest accepted record, as signed, and when the tracker last heard it."""

    body: dict[str, Any]
    """The signed fields exactly as the node sent them (re-encoding could break the signature)."""
    signature: str
    issued_at: float
    last_seen: float


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes) -> Any:
    """Strict JSON (no NaN/Infinity); any failure is a `RecordRejected` with check ``json``."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise RecordRejected("json", f"the body is not JSON: {str(exc)[:200]}") from None


class NodeTable:
    """The tracker's state: records by node id and verdicts by node id and key. No I/O, so the
    rules can be tested without HTTP; every method takes the current time."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.entries: dict[str, Entry] = {}
        self.verdicts: OrderedDict[str, dict[str, tuple[float, dict[str, Any]]]] = OrderedDict()
        """node id -> verdict key -> (issued at, the signed verdict as posted): the newest by
        that key."""
        self._next_purge = 0.0

    # announcements ---------------------------------------------------------------------------

    def announce(self, entry: Any, now: float) -> str:
        """Accept a signed record or raise `RecordRejected`; returns the node's status."""
        record = check_record(entry, now=now)
        known = self.entries.get(record.node_id)
        if known is not None and record.issued_at <= known.issued_at:
            raise RecordRejected("replay", f"record of {record.node_id} issued at "
                                 f"{record.issued_at:.3f} is not newer than {known.issued_at:.3f}")
        if known is None and len(self.entries) >= self.config.max_nodes:
            self._purge(now)
            if len(self.entries) >= self.config.max_nodes:
                raise RecordRejected("full", f"the tracker holds {len(self.entries)} nodes, "
                                     f"its limit; try again later")
        body = {k: v for k, v in entry.items() if k in SIGNED_FIELDS}
        self.entries[record.node_id] = Entry(body, entry["signature"], record.issued_at, now)
        return self.status(record.node_id)

    def _droppable(self, e: Entry, now: float) -> bool:
        """Neither listed nor replayable: forgetting it cannot let an old record back in."""
        return e.last_seen < now - self.config.ttl_s and e.issued_at < now - MAX_SKEW_S

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        for node_id in [k for k, e in self.entries.items() if self._droppable(e, now)]:
            del self.entries[node_id]

    def listing(self, now: float) -> list[dict[str, Any]]:
        """Every node heard from within `ttl_s`: its signed record plus what the tracker adds."""
        cutoff = now - self.config.ttl_s
        out = []
        for node_id, e in self.entries.items():
            if e.last_seen < cutoff:
                continue
            verdicts = [v for _, v in sorted(self.verdicts.get(node_id, {}).values(),
                                             key=lambda t: t[0])]
            out.append({**e.body, "signature": e.signature, "status": self.status(node_id),
                        "last_seen": e.last_seen, "verdict": verdicts[-1] if verdicts else None,
                        "verdicts": verdicts})
        return out

    def status(self, node_id: str) -> str:
        return "evicted" if self.verdicts.get(node_id) else "ok"

    # verdicts --------------------------------------------------------------------------------

    def post_verdict(self, node_id: str, entry: Any, now: float) -> None:
        """Keep a verdict signed by a configured key, or raise `RecordRejected`."""
        if not self.config.verdict_keys:
            raise RecordRejected("no-verdict-keys", NO_VERDICT_KEYS)
        verdict = check_verdict(entry, self.config.verdict_keys, now=now)
        if verdict.node_id != node_id:
            raise RecordRejected("node-mismatch", f"the verdict is about {verdict.node_id}, "
                                 f"not {node_id}")
        by_key = self.verdicts.setdefault(node_id, {})
        old = by_key.get(verdict.by)
        if old is None or verdict.issued_at > old[0]:
            by_key[verdict.by] = (verdict.issued_at, dict(entry))  # as signed: no re-encoding
        self.verdicts.move_to_end(node_id)
        while len(self.verdicts) > self.config.max_verdict_nodes:
            self.verdicts.popitem(last=False)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (check ``size``) beyond `limit` bytes whatever the headers say."""
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > limit):
        raise RecordRejected("size", f"a body of {declared[:20]} bytes; at most {limit}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise RecordRejected("size", f"a body of more than {limit} bytes")
    return bytes(data)


def refusal(exc: RecordRejected, statuses: dict[str, int], default: int) -> JSONResponse:
    return JSONResponse({"error": {"check": exc.check, "message": exc.detail}},
                        status_code=statuses.get(exc.check, default))


def create_app(config: TrackerConfig | None = None) -> FastAPI:
    """The tracker's HTTP API over one `NodeTable` (handlers are async: one event loop, so the
    replay check and the update of a record cannot interleave)."""
    config = config or TrackerConfig()
    app = FastAPI(title="shoal tracker")
    table = NodeTable(config)
    app.state.table = table

    @app.post("/announce")
    async def announce(request: Request) -> JSONResponse:
        try:
            entry = parse_json(await read_body(request, config.max_record_bytes))
            status = table.announce(entry, time.time())
        except RecordRejected as exc:
            return refusal(exc, ANNOUNCE_STATUS, 400)
        return JSONResponse({"ok": True, "status": status})

    @app.get("/nodes")
    async def list_nodes() -> JSONResponse:
        return JSONResponse(table.listing(time.time()))

    @app.post("/nodes/{node_id}/status")
    async def set_status(node_id: str, request: Request) -> JSONResponse:
        try:
            if not config.verdict_keys:  # refuse before reading anything
                raise RecordRejected("no-verdict-keys", NO_VERDICT_KEYS)
            entry = parse_json(await read_body(request, config.max_verdict_bytes))
            table.post_verdict(node_id, entry, time.time())
        except RecordRejected as exc:
            return refusal(exc, VERDICT_STATUS, 401)
        return JSONResponse({"ok": True, "status": table.status(node_id)})

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "nodes": len(table.entries)}

    return app


def run_tracker(config: TrackerConfig) -> None:
    """Blocking entry point (used by `shoal tracker`)."""
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
