"""One erasure, run by `shoal traces erase` in its own process while another process owns the
store and keeps appending: the contributor's rows, log records, feedback, grants, the datasets
and cache curation derived from them, and old table versions all go, with a receipt counting
each; no file under $SHOAL_HOME holds the canary afterwards; no acknowledged trace of anyone
else is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.erasure import with_derived_erasure
from tests.traces.test_store import files_containing, make_trace
from traces.schemas import FeedbackIn
from traces.store import TraceStore, TraceStoreConfig

pytestmark = pytest.mark.slow
CANARY = b"canary-erasure-everywhere-5c1e"


def test_erasure_everywhere_from_another_process(tmp_path):
    import datasets

    home = tmp_path / "home"
    root = home / "traces"
    owner = with_derived_erasure(TraceStore(TraceStoreConfig(
        uri=str(root / "lancedb"), log_dir=root / "log", embed=False,
        flush_interval_s=3600)), home)  # stands in for the gateway: it owns the log
    owner.start()
    alice, bob = (owner.create_account("contributor", n) for n in ("alice", "bob"))
    ga, gb = owner.create_grant(alice, ["sft"], 30), owner.create_grant(bob, ["sft"], 30)
    text = CANARY.decode()
    ingested = make_trace(alice, ga, f"{text} in lance")
    owner.record(ingested)
    owner.flush()
    owner.add_feedback(alice, FeedbackIn(request_id=ingested.request_id, correction=text))
    data = [p for p in (root / "lancedb").rglob("*.lance")
            if p.is_file() and CANARY in p.read_bytes()]
    assert any("/data/" in str(p) for p in data)  # in LanceDB's data files, as plain bytes
    sft = home / "datasets" / "sft-0123456789abcdef"
    datasets.Dataset.from_list([{"request_id": ingested.request_id, "messages": [
        {"role": "user", "content": text}]}]).save_to_disk(str(sft / "train"))
    (sft / "card.json").write_text("{}")
    (home / "datasets" / "latest.json").write_text(json.dumps({"sft": sft.name}))
    owner.add_dataset_members(sft.name, [ingested.request_id])
    (home / "cache" / "curate").mkdir(parents=True)
    (home / "cache" / "curate" / "chunk-result").write_bytes(b"scrubbed " + CANARY)
    owner.record(make_trace(alice, ga, f"{text} only in the log"))

    acked: list[str] = []
    stop = threading.Event()

    def bob_keeps_writing() -> None:
        while not stop.is_set():
            trace = make_trace(bob, gb, "bob's own question")
            owner.record(trace)
            acked.append(trace.request_id)
            time.sleep(0.002)  # paced like requests, so the erasure gets its turn

    writer = threading.Thread(target=bob_keeps_writing)
    writer.start()
    env = {**os.environ, "SHOAL_HOME": str(home),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    erase = subprocess.run([sys.executable, "-m", "flows.cli", "traces", "erase",
                            "--contributor", alice.account_id], env=env, capture_output=True,
                           text=True, timeout=300)
    stop.set()
    writer.join()
    assert erase.returncode == 0, erase.stderr
    receipt = json.loads(erase.stdout)
    assert {k: receipt["erased"][k] for k in (
        "traces", "log_records", "feedback", "grants", "dataset_members", "datasets_withdrawn",
        "curate_cache_files")} == {"traces": 1, "log_records": 1, "feedback": 1, "grants": 1,
                                   "dataset_members": 1, "datasets_withdrawn": 1,
                                   "curate_cache_files": 1}
    assert receipt["old_table_versions_removed"]["traces"] >= 1 and not receipt["incomplete"]
    owner.stop()
    assert files_containing(home, CANARY) == []
    assert json.loads((home / "datasets" / "latest.json").read_text()) == {}
    assert len(acked) > 0
    stored = {r["request_id"] for r in owner.query(contributor_id=bob.account_id,
                                                   limit=1_000_000)}
    assert stored == set(acked)  # appends during the erasure all survived it
    assert owner.query(contributor_id=alice.account_id) == []
