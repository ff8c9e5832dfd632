"""`shoal bench traces`: what consented capture costs a request, and how fast ingestion runs.

- the trace path: deciding consent (cached grant lookup) and appending the trace to the fsync'd
  log, timed per request (p50 / p99 in ms), exactly what the gateway does before answering
  (`traces.capture.capture`, called with a request and outcome as the gateway passes them);
- ingestion: how many traces per second the background writer moves from the log into LanceDB,
  with and without embedding them.

Writes `traces.json` in the output directory.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def run_traces_bench(out_dir: Path, requests: int = 1000, ingest: int = 2000) -> dict[str, Any]:
    from traces.capture import capture
    from traces.store import TraceStore, TraceStoreConfig

    with tempfile.TemporaryDirectory() as tmp:
        store = TraceStore(TraceStoreConfig(uri=f"{tmp}/lancedb", log_dir=Path(tmp) / "log"))
        caller = store.create_account("contributor", "bench")
        store.create_grant(caller, ["sft"], 30)
        body = SimpleNamespace(store=None, metadata=None)  # a request that did not opt out
        messages = [{"role": "user", "content": "Summarise the attached log in three lines. " * 8}]
        sampling = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 1024, "seed": None}
        outcome = SimpleNamespace(prompt_tokens=120, completion_tokens=64, route=["a", "b", "c"],
                                  drafter="prompt_lookup", drafted=40, accepted=30, total_s=1.2,
                                  first_token_s=0.2)
        completion = "The service restarted twice; both times the cache was cold. " * 4
        timings = []
        for _ in range(requests):
            t0 = time.perf_counter()
            capture(store, caller, body, messages=messages, completion=completion, tool_calls=[],
                    sampling=sampling, outcome=outcome, version="sha256:" + "0" * 64,
                    proof_status="verified")
            timings.append(1000 * (time.perf_counter() - t0))
        timings.sort()
        report = {"trace_path_ms": {"p50": statistics.median(timings),
                                    "p99": timings[int(0.99 * len(timings)) - 1],
                                    "requests": requests}}
        t0 = time.perf_counter()
        store.flush()
        report["ingest_embedded_traces_per_s"] = requests / (time.perf_counter() - t0)
        store.config.embed = False
        for _ in range(ingest):
            capture(store, caller, body, messages=messages, completion=completion, tool_calls=[],
                    sampling=sampling, outcome=outcome, version="sha256:" + "0" * 64,
                    proof_status="verified")
        t0 = time.perf_counter()
        store.flush()
        report["ingest_plain_traces_per_s"] = ingest / (time.perf_counter() - t0)
        assert store.tables["traces"].count_rows() == requests + ingest
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "traces.json").write_text(json.dumps(report, indent=2))
    return report
