"""The embedding worker process: it embeds what the owner logs (readers' rows first), a new one
takes over when it is killed -9 with nothing lost, and it exits when its parent is killed -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

OWNER = r"""
import sys, time
from pathlib import Path
from tests.traces.test_store import make_trace
from traces.store import TraceStore, TraceStoreConfig

root = Path(sys.argv[1])
store = TraceStore(TraceStoreConfig(uri=str(root / "lancedb"), log_dir=root / "log",
                                    flush_interval_s=0.05, embed_batch=16))
alice = store.create_account("contributor", "alice")
grant = store.create_grant(alice, ["sft"], 30)
for i in range(100):
    store.record(make_trace(alice, grant, f"question {i}"))
store.start()
first = store.ingestion.worker.pid
print("worker", first, flush=True)
snapshot = store.curation_snapshot()["traces"]  # asks the worker for its rows, waits for them
print("snapshot", sum(r["vector"] is not None for r in snapshot), flush=True)
while store.ingestion.worker.pid == first:
    time.sleep(0.05)
for i in range(50):  # logged while the first worker is dead: the next one embeds them
    store.record(make_trace(alice, grant, f"later {i}"))
print("worker", store.ingestion.worker.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


def _unembedded(root: Path) -> tuple[int, int]:
    import lancedb

    table = lancedb.connect(str(root / "lancedb")).open_table("traces")
    return table.count_rows(), table.count_rows("embedder IS NULL OR vector IS NULL")


def test_worker_embeds_survives_kill_and_exits_with_its_parent(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        first = int(owner.stdout.readline().split()[1])
        assert owner.stdout.readline().split() == ["snapshot", "100"]
        os.kill(first, signal.SIGKILL)
        second = int(owner.stdout.readline().split()[1])
        assert second != first
        deadline = time.monotonic() + 60
        while _unembedded(tmp_path) != (150, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _unembedded(tmp_path) == (150, 0)  # nothing lost, everything embedded
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 10
        while not _gone(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(second)  # the worker noticed its parent's death and exited
    finally:
        owner.kill()
        owner.wait()
