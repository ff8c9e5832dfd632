"""Usage metering: who used the swarm and which nodes served it, for settlement.

Per owner (the account behind an API key, or the key itself for static keys): requests, batch
lines, prompt and completion tokens, counted from the `usage` of every response served (a batch
line is counted in the same transaction that records its answer, so a line run twice after a crash
is counted once, like its answer). Per node: traversals and positions computed, counted from the
receipt chains the pipeline accepted (signed by the node and checked against the tensor that came
back, never a node's own claim), and checks passed and failed, from the verifier's verdicts.

Node counts arrive once per traversal, so they are summed in memory and written every
`flush_s`; a killed gateway loses at most that much of them. Key counts are written per response.
"""

from __future__ import annotations

import asyncio
import csv
import io
import threading
from typing import Any

from serve.gateway.statedb import StateDB

KEY_FIELDS = ("requests", "batch_lines", "prompt_tokens", "completion_tokens")
NODE_FIELDS = ("traversals", "positions", "checks_passed", "checks_failed")


def add_key_usage(conn, owner: str, usage: dict[str, int], *, batch_line: bool) -> None:
    """Add one served response's `usage` to `owner` (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO key_usage (owner, requests, batch_lines, prompt_tokens, completion_tokens) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET "
        "requests = requests + excluded.requests, batch_lines = batch_lines + "
        "excluded.batch_lines, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens",
        (owner, 0 if batch_line else 1, 1 if batch_line else 0,
         int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))))


class Meter:
    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._nodes: dict[str, list[int]] = {}
        """Node id -> unflushed counts in NODE_FIELDS order."""
        self._lock = threading.Lock()

    # recording ------------------------------------------------------------------------------

    def served(self, owner: str, usage: dict[str, int]) -> None:
        """An interactive response was served to `owner` (call in a worker thread)."""
        with self.db.transaction() as conn:
            add_key_usage(conn, owner, usage, batch_line=False)

    def receipts(self, receipts: list) -> None:
        """The pipeline accepted a traversal whose chain holds these receipts."""
        with self._lock:
            for r in receipts:
                counts = self._nodes.setdefault(r.node_id, [0, 0, 0, 0])
                counts[0] += 1
                counts[1] += int(r.count)

    def check(self, node_id: str, ok: bool) -> None:
        """The verifier reached a verdict on `node_id`."""
        with self._lock:
            self._nodes.setdefault(node_id, [0, 0, 0, 0])[2 if ok else 3] += 1

    def flush(self) -> None:
        with self._lock:
            pending, self._nodes = self._nodes, {}
        if not pending:
            return
        with self.db.transaction() as conn:
            for node_id, c in pending.items():
                conn.execute(
                    "INSERT INTO node_usage (node_id, traversals, positions, checks_passed, "
                    "checks_failed) VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                    "traversals = traversals + excluded.traversals, positions = positions + "
                    "excluded.positions, checks_passed = checks_passed + excluded.checks_passed, "
                    "checks_failed = checks_failed + excluded.checks_failed", (node_id, *c))

    async def run(self, flush_s: float = 1.0) -> None:
        """Write node counts every `flush_s` until cancelled (and once more then)."""
        try:
            while True:
                await asyncio.sleep(flush_s)
                await asyncio.to_thread(self.flush)
        finally:
            self.flush()

    # reading --------------------------------------------------------------------------------

    def report(self, owner: str | None = None) -> dict[str, Any]:
        """Usage by owner (all owners and all nodes when `owner` is None; else that owner's
        row only)."""
        self.flush()
        if owner is None:
            keys = self.db.rows("SELECT * FROM key_usage ORDER BY owner")
        else:
            keys = self.db.rows("SELECT * FROM key_usage WHERE owner = ?", (owner,))
        out: dict[str, Any] = {"object": "usage", "keys": [_key_row(r) for r in keys]}
        if owner is None:
            out["nodes"] = [{"node_id": r["node_id"], **{f: r[f] for f in NODE_FIELDS}}
                            for r in self.db.rows("SELECT * FROM node_usage ORDER BY node_id")]
        return out


def _key_row(r) -> dict[str, Any]:
    row = {"owner": r["owner"], **{f: r[f] for f in KEY_FIELDS}}
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return row


def to_csv(report: dict[str, Any]) -> str:
    """A usage report as CSV: one row per owner, then one per node (`kind` tells them apart)."""
    fields = ["kind", "id", *KEY_FIELDS, "total_tokens", *NODE_FIELDS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, extrasaction="ignore")
    writer.writeheader()
    for row in report.get("keys", []):
        writer.writerow({"kind": "key", "id": row["owner"], **row})
    for row in report.get("nodes", []):
        writer.writerow({"kind": "node", "id": row["node_id"], **row})
    return buf.getvalue()
