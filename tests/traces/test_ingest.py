"""Ingestion in two passes: rows without embeddings first, embeddings later and only where
needed; reads never embed; time filters run in LanceDB; the backlog is reported against a bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.traces.test_store import make_trace
from traces.store import TraceStore, TraceStoreConfig


@pytest.fixture
def store(tmp_path) -> TraceStore:
    return TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                       embedder="minilm", backlog_bound=3))


def embedders(store: TraceStore) -> dict[str, str | None]:
    return {r["request_id"]: r["embedder"] for r in
            store.tables["traces"].search().select(["request_id", "embedder"]).limit(None)
            .to_list()}


def test_rows_arrive_unembedded_and_reads_never_embed(store):
    alice = store.create_account("contributor", "alice")
    grant = store.create_grant(alice, ["sft"], 30)
    traces = [make_trace(alice, grant, f"question {i}") for i in range(5)]
    for t in traces:
        store.record(t)
    assert store.backlog()["log_records"] == 5 and store.backlog()["over_bound"]
    assert {r["request_id"] for r in store.query()} == {t.request_id for t in traces}
    store.get(traces[0].request_id)
    assert set(embedders(store).values()) == {None}  # listed and read, nothing embedded
    assert store.ingestion._embedder is None  # the embedder was not even loaded
    backlog = store.backlog()
    assert backlog["log_records"] == 0 and not backlog["over_bound"]
    assert store.ingestion.count_unembedded() == 5 and store.backlog()["over_bound"]
    assert store.embed_pending() == 5
    version = store.ingestion.embedder.version
    assert set(embedders(store).values()) == {version} and store.embed_pending() == 0
    assert store.ingestion.count_unembedded() == 0 and not store.backlog()["over_bound"]


def test_curation_embeds_only_what_it_reads_and_never_mixes_embedders(store):
    alice = store.create_account("contributor", "alice")
    bob = store.create_account("contributor", "bob")
    ga, gb = store.create_grant(alice, ["sft"], 30), store.create_grant(bob, ["sft"], 30)
    mine = [make_trace(alice, ga, f"alice {i}") for i in range(3)]
    theirs = make_trace(bob, gb, "bob's")
    for t in [*mine, theirs]:
        store.record(t)
    store.revoke_grant(bob, gb.grant_id)
    snapshot = store.curation_snapshot()
    assert [r["request_id"] for r in snapshot["traces"]] == [t.request_id for t in mine]
    assert all(r["vector"] is not None for r in snapshot["traces"])
    state = embedders(store)
    assert state[theirs.request_id] is None  # not readable, so not embedded
    assert {state[t.request_id] for t in mine} == {store.ingestion.embedder.version}

    # a vector from another embedder version is stale: re-embedded, never handed out as is
    stale = mine[0].request_id
    store.tables["traces"].update(where=f"request_id = '{stale}'", values={"embedder": "old"})
    assert store.curation_snapshot(embeddings=False)["traces"][0]["vector"] is None
    assert store.curation_snapshot()["traces"][0]["vector"] is not None
    assert embedders(store)[stale] == store.ingestion.embedder.version


def test_time_filters_run_in_the_query(tmp_path):
    store = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                        embed=False))
    alice = store.create_account("contributor", "alice")
    grant = store.create_grant(alice, ["sft"], 30)
    base = datetime(2026, 6, 1, 12, tzinfo=UTC)
    traces = []
    for hours in range(5):
        t = make_trace(alice, grant, f"at {hours}").model_copy(
            update={"created_at": base + timedelta(hours=hours)})
        traces.append(t)
        store.record(t)
    ids = [t.request_id for t in traces]
    got = store.query(since=base + timedelta(hours=1), until=base + timedelta(hours=3))
    assert [r["request_id"] for r in got] == [ids[2], ids[1]]  # newest first, until exclusive
    lisbon_summer = timezone(timedelta(hours=1))  # the same instant written with an offset
    got = store.query(since=(base + timedelta(hours=3)).astimezone(lisbon_summer))
    assert [r["request_id"] for r in got] == [ids[4], ids[3]]
    naive = store.query(until=(base + timedelta(hours=1)).replace(tzinfo=None))  # taken as UTC
    assert [r["request_id"] for r in naive] == [ids[0]]
    assert "vector" not in got[0]


READER = r"""
import json, sys, time
from pathlib import Path
from traces.store import TraceStore, TraceStoreConfig

root = Path(sys.argv[1])
store = TraceStore(TraceStoreConfig(uri=str(root / "lancedb"), log_dir=root / "log",
                                    embedder="static", embed_wait_s=120))
t0 = time.monotonic()
snapshot = store.curation_snapshot()
print(json.dumps({"seconds": time.monotonic() - t0,
                  "vectors": {r["request_id"]: r["vector"] for r in snapshot["traces"]}}))
"""


def test_a_reader_beside_an_owner_that_never_embeds_embeds_what_it_reads(tmp_path):
    """The log's owner runs without embeddings (a gateway with `embed` off); a curation read in
    another process neither waits out `embed_wait_s` for vectors that never come nor hands out
    rows without them: it embeds them itself, and writes nothing (vectors are the owner's)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from traces.embedders import load
    from traces.ingest import embed_text

    owner = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                        embedder="static", embed=False))
    alice = owner.create_account("contributor", "alice")
    grant = owner.create_grant(alice, ["sft"], 30)
    traces = [make_trace(alice, grant, f"question {i}") for i in range(3)]
    for t in traces:
        owner.record(t)  # this process owns the log now
    owner.flush()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", READER, str(tmp_path)], env=env, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["seconds"] < 60  # not the 120 s wait for an owner that never embeds
    rows = [owner.get(t.request_id) for t in traces]
    expected = load("static", owner.config.embedder_cache).embed([embed_text(r) for r in rows])
    assert set(got["vectors"]) == {t.request_id for t in traces}
    for t, want in zip(traces, expected):
        vector = got["vectors"][t.request_id]
        assert vector is not None and max(abs(a - b) for a, b in zip(vector, want)) < 1e-5
    assert set(embedders(owner).values()) == {None}  # the reader stored nothing
