"""The trace store on a temp directory: keys, grants, durable capture, feedback, real erasure."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from traces.exceptions import AuthError, Forbidden, InvalidInput
from traces.schemas import FeedbackIn, Trace
from traces.store import TraceStore, TraceStoreConfig

CANARY = "canary-7f3a-unmistakable-marker"


@pytest.fixture
def store(tmp_path) -> TraceStore:
    return TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                       embed=False))


def make_trace(contributor, grant, text: str = "hello", request_id: str | None = None) -> Trace:
    import uuid

    return Trace(request_id=request_id or uuid.uuid4().hex, trace_id="run-1",
                 contributor_id=contributor.account_id, grant_id=grant.grant_id,
                 grant_scopes=grant.scopes, grant_expires_at=grant.expires_at,
                 model_version="sha256:" + "ab" * 32,
                 messages_json=json.dumps([{"role": "user", "content": text}]),
                 completion=f"answer to {text}", prompt_tokens=3, completion_tokens=4,
                 route=["n1"], proof_status="verified", latency_ms=5.0, ttft_ms=1.0,
                 created_at=datetime.now(UTC))


def test_keys_are_hashed_and_revocable(store, tmp_path):
    alice = store.create_account("contributor", "alice")
    key_id, secret = store.create_key(alice.account_id)
    assert store.authenticate(secret).account_id == alice.account_id
    raw = b"".join(p.read_bytes() for p in (tmp_path / "lancedb").rglob("*") if p.is_file())
    assert secret.encode() not in raw  # only the hash is stored
    store.revoke_key(key_id)
    with pytest.raises(AuthError):
        store.authenticate(secret)
    with pytest.raises(InvalidInput):
        store.create_account("admin")


def test_grants_scope_expiry_revocation(store):
    alice = store.create_account("contributor", "alice")
    app = store.create_account("app", "an app")
    with pytest.raises(Forbidden):
        store.create_grant(app, ["sft"], 30)
    with pytest.raises(InvalidInput):
        store.create_grant(alice, ["everything"], 30)
    short = store.create_grant(alice, ["sft", "dpo"], days=1 / 86400)  # one second
    assert store.active_grant(alice.account_id).grant_id == short.grant_id
    time.sleep(1.2)
    assert store.active_grant(alice.account_id) is None
    g = store.create_grant(alice, ["eval"], 30)
    store.revoke_grant(alice, g.grant_id)
    assert store.active_grant(alice.account_id) is None


def test_capture_is_idempotent_across_replays(store, tmp_path):
    alice = store.create_account("contributor", "alice")
    grant = store.create_grant(alice, ["sft"], 30)
    t = make_trace(alice, grant)
    store.record(t)
    # a crash before the segment was dropped: the same record is ingested twice
    segment = store.log.rotate()[0]
    copy = segment.read_bytes()
    store.flush()
    (tmp_path / "log" / segment.name).write_bytes(copy)
    again = TraceStore(store.config)
    again.flush()
    rows = again.query(contributor_id=alice.account_id)
    assert [r["request_id"] for r in rows] == [t.request_id]
    assert rows[0]["grant_id"] == grant.grant_id and rows[0]["grant_scopes"] == ["sft"]


def test_feedback_only_on_own_traces(store):
    alice = store.create_account("contributor", "alice")
    bob = store.create_account("contributor", "bob")
    t = make_trace(alice, store.create_grant(alice, ["dpo"], 30))
    store.record(t)
    store.add_feedback(alice, FeedbackIn(trace_id=t.request_id, rating=5))
    with pytest.raises(Forbidden):
        store.add_feedback(bob, FeedbackIn(trace_id=t.request_id, rating=1))
    with pytest.raises(InvalidInput):
        store.add_feedback(alice, FeedbackIn(trace_id=t.request_id))
    assert store.query(min_rating=4)[0]["request_id"] == t.request_id


def test_tables_are_readable_from_duckdb_and_pandas(store):
    import duckdb

    alice = store.create_account("contributor", "alice")
    grant = store.create_grant(alice, ["sft"], 30)
    for i in range(3):
        store.record(make_trace(alice, grant, f"question {i}"))
    store.flush()
    frame = store.tables["traces"].to_pandas()
    assert len(frame) == 3 and set(frame["contributor_id"]) == {alice.account_id}
    arrow = store.tables["traces"].to_arrow()  # noqa: F841  (DuckDB reads it by name)
    count = duckdb.sql("SELECT count(*) FROM arrow WHERE completion LIKE 'answer%'").fetchall()
    assert count == [(3,)]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_erasure_leaves_no_bytes_anywhere(store, tmp_path):
    alice = store.create_account("contributor", "alice")
    bob = store.create_account("contributor", "bob")
    ga, gb = store.create_grant(alice, ["sft"], 30), store.create_grant(bob, ["sft"], 30)
    ingested = make_trace(alice, ga, f"{CANARY} in lance")
    store.record(ingested)
    store.record(make_trace(bob, gb, "bob keeps this"))
    store.flush()
    store.add_feedback(alice, FeedbackIn(trace_id=ingested.request_id, correction=CANARY))
    store.tables["dataset_members"].add([{"dataset_id": "sft-v1",
                                          "request_id": ingested.request_id}])
    store.record(make_trace(alice, ga, f"{CANARY} still in the log"))
    assert files_containing(tmp_path, CANARY.encode())
    receipt = store.erase_contributor(alice.account_id)
    assert files_containing(tmp_path, CANARY.encode()) == []
    assert receipt["erased"]["traces"] == 1 and receipt["log_records_removed"] == 1
    assert receipt["datasets_marked_for_rebuild"] == ["sft-v1"]
    assert store.tables["datasets_to_rebuild"].to_arrow().num_rows == 1
    assert [r["contributor_id"] for r in store.query()] == [bob.account_id]
    assert store.active_grant(alice.account_id) is None


def test_traces_bench_runs_small(tmp_path):
    from traces.bench import run_traces_bench

    report = run_traces_bench(tmp_path, traces=16, writers=(1, 4), embedder="static",
                              compare=(), dedup_traces=10, modes=("thread",))
    assert [c["writers"] for c in report["concurrent"]] == [1, 4]
    for level in report["concurrent"]:
        path = level["trace_path_ms"]
        assert 0 < path["p50"] <= path["p99"] and path["calls"] == 16
        assert level["end_to_end_traces_per_s"] > 0
    assert report["passes"]["rows_traces_per_s"] > 0
    log_ = {(r["writers"], r["group_commit"]): r for r in report["log"]}
    assert set(log_) == {(1, True), (1, False), (4, True), (4, False)}
    assert log_[(1, False)]["fsyncs_per_append"] == 1.0
    assert 0 < log_[(4, True)]["fsyncs_per_append"] <= 1.0
    reference = report["embedders"]["embedders"]["minilm"]
    assert reference["agreement"]["jaccard"] == 1.0 and reference["threshold"] == 0.98
    assert json.loads((tmp_path / "traces.json").read_text()) == report


def test_tables_written_before_the_schemas_were_derived_still_open(tmp_path):
    """A store whose `traces` and `receipts` tables were created from the earlier hand-written
    Arrow schemas opens them (adding the `embedder` column), ingests into them and rewrites them
    on erasure, columns unchanged."""
    import lancedb
    import pyarrow as pa

    ts, strings = pa.timestamp("us", tz="UTC"), pa.list_(pa.string())
    earlier = {
        "traces": pa.schema([
            ("request_id", pa.string()), ("trace_id", pa.string()), ("parent_id", pa.string()),
            ("contributor_id", pa.string()), ("grant_id", pa.string()), ("grant_scopes", strings),
            ("grant_expires_at", ts), ("model_version", pa.string()),
            ("messages_json", pa.string()), ("completion", pa.string()),
            ("tool_calls_json", pa.string()), ("sampling_json", pa.string()),
            ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("route", strings),
            ("proof_status", pa.string()), ("drafter_json", pa.string()),
            ("latency_ms", pa.float64()), ("ttft_ms", pa.float64()), ("created_at", ts),
            ("vector", pa.list_(pa.float32(), 384))]),
        "receipts": pa.schema([("receipt_id", pa.string()), ("contributor_id", pa.string()),
                               ("json", pa.string()), ("created_at", ts)]),
    }
    db = lancedb.connect(str(tmp_path / "lancedb"))
    for name, schema in earlier.items():
        db.create_table(name, schema=schema)
    store = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                        embed=False))
    # the columns added since (which embedder made `vector`, the routing policy) are added
    for added in ("embedder", "routing_policy", "tools_json"):
        earlier["traces"] = earlier["traces"].append(pa.field(added, pa.string()))
    assert {n: store.schemas[n] for n in earlier} == earlier
    assert {n: store.tables[n].schema for n in earlier} == earlier
    alice = store.create_account("contributor", "alice")
    t = make_trace(alice, store.create_grant(alice, ["sft"], 30))
    store.record(t)
    assert [r["request_id"] for r in store.query()] == [t.request_id]
    receipt = store.erase_contributor(alice.account_id)
    assert receipt["erased"]["traces"] == 1 and store.query() == []
    assert {n: store.tables[n].schema for n in earlier} == earlier
    stored = store.tables["receipts"].to_arrow().to_pylist()
    assert [json.loads(r["json"])["receipt_id"] for r in stored] == [receipt["receipt_id"]]
