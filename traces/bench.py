"""`shoal bench traces`: what consented capture costs a request, and how fast ingestion runs.

- the trace path: deciding consent (cached grant lookup) and appending the trace to the fsync'd
  log, timed per call (p50 / p99 in ms), exactly what the gateway does before answering
  (`traces.capture.capture`), at 1, 4 and 16 concurrent writers;
- end to end, at each writer count: traces/s from the first append until every trace is a
  LanceDB row with its embedding, with the store's background writer and embedder running, the
  embedder both as a worker process and as a thread of the writing process (`embed_worker`),
  side by side in one run, with the machine's load average before and after;
- each ingestion pass alone, on the same traces: log → rows (traces/s) and rows → embeddings;
- the durable log alone at each writer count: appends with group commit (the log's) beside one
  fsync per append (the baseline), p50 / p99 and fsyncs per append, side by side;
- the embedders: speed and semantic-dedup agreement with MiniLM (`traces.bench_embedders`).

The traces are the curation benchmark's (~500 words). Writes `traces.json` in the output directory.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from traces.log import DurableLog

GOALS = {"rows_traces_per_s": 5000, "embeddings_traces_per_s": 500, "trace_path_p99_ms": 2.0}
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 1024, "seed": None}
OUTCOME = SimpleNamespace(prompt_tokens=120, completion_tokens=64, route=["a", "b", "c"],
                          routing_policy="any", drafter="prompt_lookup", drafted=40, accepted=30, total_s=1.2,
                          first_token_s=0.2)


def _store(tmp: str, embedder: str, embed: bool = True, worker: bool = False):
    from traces.store import TraceStore, TraceStoreConfig

    return TraceStore(TraceStoreConfig(uri=f"{tmp}/lancedb", log_dir=Path(tmp) / "log",
                                       embedder=embedder, embed=embed, embed_worker=worker))


def _write(store, rows: list[dict], writers: int) -> list[float]:
    """Capture `rows` from `writers` threads; returns each call's milliseconds."""
    from traces.capture import capture

    caller = store.create_account("contributor", "bench")
    store.create_grant(caller, ["sft"], 30)
    body = SimpleNamespace(store=None, metadata=None)  # a request that did not opt out
    timings: list[float] = []

    def one(part: list[dict]) -> None:
        mine = []
        for row in part:
            messages = json.loads(row["messages_json"])
            t0 = time.perf_counter()
            capture(store, caller, body, messages=messages, completion=row["completion"],
                    tool_calls=[], sampling=SAMPLING, outcome=OUTCOME,
                    version="sha256:" + "0" * 64, proof_status="verified")
            mine.append(1000 * (time.perf_counter() - t0))
        timings.extend(mine)

    threads = [threading.Thread(target=one, args=(rows[i::writers],)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return timings


def _percentiles(timings: list[float]) -> dict:
    timings = sorted(timings)
    return {"mean": round(statistics.fmean(timings), 3),
            "p50": round(statistics.median(timings), 3),
            "p99": round(timings[max(0, int(0.99 * len(timings)) - 1)], 3),
            "calls": len(timings)}


def end_to_end(rows: list[dict], writers: int, embedder: str, mode: str = "worker") -> dict:
    """Writers capture while the background passes run; traces/s until all are embedded. The
    embedding pass runs in a worker process (`mode` "worker") or a thread ("thread")."""
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(tmp, embedder, worker=mode == "worker")
        store.ingestion.embedder.embed(["warm"])  # load the embedder before the clock starts
        store.start()
        while store.ingestion.worker is not None and store.ingestion.worker.unembedded is None:
            time.sleep(0.05)  # the worker has loaded its embedder and counted
        t0 = time.perf_counter()
        timings = _write(store, rows, writers)
        appended = time.perf_counter() - t0
        while store.ingestion.ingested < len(rows) or store.ingestion.count_unembedded():
            time.sleep(0.05)
        total = time.perf_counter() - t0
        store.stop()
        assert store.tables["traces"].count_rows() == len(rows)
    return {"writers": writers, "embed_mode": mode, "trace_path_ms": _percentiles(timings),
            "append_traces_per_s": round(len(rows) / appended),
            "end_to_end_traces_per_s": round(len(rows) / total, 1)}


class FsyncEach(DurableLog):
    """The baseline: each append waits for an fsync of its own, one after another."""

    def _sync(self, mine: int) -> None:
        with self._lock:
            os.fsync(self._fh.fileno())


def log_appends(rows: list[dict], writers: int, group_commit: bool) -> dict:
    """`writers` threads append `rows` to a fresh durable log; per-append milliseconds."""
    with tempfile.TemporaryDirectory() as tmp:
        log_ = (DurableLog if group_commit else FsyncEach)(Path(tmp))
        assert log_.acquire()
        timings: list[float] = []

        def one(part: list[dict]) -> None:
            mine = []
            for row in part:
                t0 = time.perf_counter()
                log_.append(row)
                mine.append(1000 * (time.perf_counter() - t0))
            timings.extend(mine)

        threads = [threading.Thread(target=one, args=(rows[i::writers],)) for i in range(writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        fsyncs = log_.fsyncs if group_commit else len(rows)
    return {"writers": writers, "group_commit": group_commit, "append_ms": _percentiles(timings),
            "fsyncs_per_append": round(fsyncs / len(rows), 3),
            "appends_per_s": round(len(rows) / elapsed)}


def passes(rows: list[dict], embedder: str) -> dict:
    """Each pass alone over the same traces: log → rows, then rows → embeddings; and the trace
    path while no pass runs (the capture cost alone, for comparison with the runs above)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(tmp, embedder)
        idle = _write(store, rows, 1)
        t0 = time.perf_counter()
        assert store.flush() == len(rows)
        t1 = time.perf_counter()
        store.ingestion.embedder.embed(["warm"])
        t2 = time.perf_counter()
        assert store.embed_pending() == len(rows)
        t3 = time.perf_counter()
        store.stop()
    return {"rows_traces_per_s": round(len(rows) / (t1 - t0)),
            "embeddings_traces_per_s": round(len(rows) / (t3 - t2), 1),
            "trace_path_ms_no_pass_running": _percentiles(idle)}


def run_traces_bench(out_dir: Path, traces: int = 5000, writers: tuple[int, ...] = (1, 4, 16),
                     embedder: str = "static", compare: tuple[str, ...] = ("minilm-int8",
                                                                           "static"),
                     dedup_traces: int = 300,
                     modes: tuple[str, ...] = ("worker", "thread")) -> dict[str, Any]:
    from curate import synthetic

    rows = synthetic.bench_traces(traces, tokens=500, seed=7)
    report: dict[str, Any] = {"traces": traces, "embedder": embedder, "goals": GOALS,
                              "load_average_before": list(os.getloadavg()), "cpus": os.cpu_count(),
                              "passes": passes(rows, embedder),
                              "log": [log_appends(rows, w, group) for w in writers
                                      for group in (True, False)],
                              "concurrent": [end_to_end(rows, w, embedder, mode)
                                             for w in writers for mode in modes]}
    report["load_average_after"] = list(os.getloadavg())
    if dedup_traces:
        from traces.bench_embedders import compare_embedders

        report["embedders"] = compare_embedders(compare, dedup_traces)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "traces.json").write_text(json.dumps(report, indent=2))
    return report
