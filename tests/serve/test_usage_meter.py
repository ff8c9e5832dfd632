"""The usage meter on its own SQLite file: node counts from accepted receipts and verdicts, owner
counts from served usage, what each reader may see, and the CSV export."""

from __future__ import annotations

import csv
import io

from serve import wire
from serve.gateway.statedb import StateDB
from serve.gateway.usage import Meter, to_csv


def receipt(node_id: str, count: int) -> wire.Receipt:
    return wire.Receipt(node_id, "r1", b"o" * 32, 0, 0, count, b"i" * 32, b"x" * 32, "v1")


def test_meter_counts_receipts_verdicts_and_usage(tmp_path):
    meter = Meter(StateDB(tmp_path / "gateway.db"))
    meter.receipts([receipt("node-a", 7), receipt("node-b", 7)])
    meter.receipts([receipt("node-a", 1)])
    meter.check("node-a", True)
    meter.check("node-b", False)
    meter.served("alice", {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
    meter.served("alice", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    meter.served("bob", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})

    # a new meter on the same file: what was flushed survives the process
    meter.flush()
    everyone = Meter(StateDB(tmp_path / "gateway.db")).report()
    nodes = {n["node_id"]: n for n in everyone["nodes"]}
    assert (nodes["node-a"]["traversals"], nodes["node-a"]["positions"]) == (2, 8)
    assert (nodes["node-a"]["checks_passed"], nodes["node-b"]["checks_failed"]) == (1, 1)
    alice = next(k for k in everyone["keys"] if k["owner"] == "alice")
    assert (alice["requests"], alice["prompt_tokens"], alice["completion_tokens"],
            alice["total_tokens"]) == (2, 13, 6, 19)

    own = meter.report("bob")
    assert [k["owner"] for k in own["keys"]] == ["bob"] and "nodes" not in own
    rows = list(csv.DictReader(io.StringIO(to_csv(everyone))))
    assert {(r["kind"], r["id"]) for r in rows} == {("key", "alice"), ("key", "bob"),
                                                    ("node", "node-a"), ("node", "node-b")}
    assert next(r for r in rows if r["id"] == "node-a")["positions"] == "8"
