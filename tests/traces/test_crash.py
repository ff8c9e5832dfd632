"""A real writer process killed with SIGKILL while it ingests and embeds: no acknowledged trace is
lost or doubled, and while it lives no other process can rotate or drop its segments (erasure
from another process: tests/traces/test_erasure_everywhere.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from traces.exceptions import LogOwned
from traces.store import TraceStore, TraceStoreConfig

pytestmark = pytest.mark.slow

WRITER = r"""
import json, sys, threading, uuid
from datetime import UTC, datetime
from pathlib import Path
from traces.schemas import Trace
from traces.store import TraceStore, TraceStoreConfig

root = Path(sys.argv[1])
store = TraceStore(TraceStoreConfig(uri=str(root / "lancedb"), log_dir=root / "log",
                                    batch_size=16, flush_interval_s=0.01, embed_batch=8,
                                    embedder="minilm"))
alice = store.create_account("contributor", "alice")
grant = store.create_grant(alice, ["sft"], 30)
store.start()
print("contributor", alice.account_id, flush=True)
said = threading.Lock()

def write(w):  # concurrent requests, as the gateway's threads append: their fsyncs are shared
    for i in range(25_000):
        rid = uuid.uuid4().hex
        store.record(Trace(request_id=rid, trace_id="run", contributor_id=alice.account_id,
                           grant_id=grant.grant_id, grant_scopes=grant.scopes,
                           grant_expires_at=grant.expires_at, model_version="sha256:" + "0" * 64,
                           messages_json=json.dumps([{"role": "user", "content": f"q {w} {i}"}]),
                           completion=f"answer {i} " * 20, prompt_tokens=3, completion_tokens=40,
                           route=["n1"], proof_status="verified", latency_ms=1.0, ttft_ms=1.0,
                           created_at=datetime.now(UTC)))
        with said:
            print("ack", rid, flush=True)  # acknowledged: the record is fsync'd

threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def _rows(root: Path) -> int:
    import lancedb

    db = lancedb.connect(str(root / "lancedb"))
    return db.open_table("traces").count_rows() if "traces" in db.table_names() else 0


def test_kill_during_ingestion_loses_no_acknowledged_trace(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    try:
        contributor = child.stdout.readline().split()[1]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if line.startswith("ack "):
                acked.append(line.split()[1])
            if len(acked) >= 300 and len(acked) % 50 == 0 and _rows(tmp_path) > 0:
                break
        # while the writer lives, another process reads its log but may not change it
        other = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"),
                                            log_dir=tmp_path / "log", embed=False))
        seen = {r["request_id"] for r in other.query(contributor_id=contributor, limit=10**6)}
        assert set(acked[:200]) <= seen
        with pytest.raises(LogOwned):  # rotating (or dropping) is the owner's alone
            other.log.rotate()
        for line in child.stdout:  # keep reading while ingestion goes on, then kill mid-way
            if line.startswith("ack "):
                acked.append(line.split()[1])
            if len(acked) % 97 == 0:
                break
        child.send_signal(signal.SIGKILL)
        for line in child.stdout:  # lines the kernel already had were acknowledged too
            if line.startswith("ack "):
                acked.append(line.split()[1])
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _rows(tmp_path) > 0  # killed with ingestion under way

    store = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                        embed=False))
    store.start()  # owns the log now that the writer is dead, and replays it
    store.stop()
    ids = [r["request_id"] for r in store.query(contributor_id=contributor, limit=10**6)]
    assert len(ids) == len(set(ids))
    assert set(acked) <= set(ids)
    assert store.log.backlog() == 0 and store.erase_contributor(contributor)["erased"]["traces"]
