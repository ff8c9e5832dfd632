"""`shoal bench curate`: scrub + dedup throughput on agent-like traces of ~500 tokens.

Runs the flow's chunk step (`pipeline.scrub_and_sign`: Presidio scrub + MinHash) in a process pool
of 1, 2, … workers, then the global dedup (exact + MinHash LSH), and reports traces per minute for
each pool size, plus a per-stage breakdown on one core. Pools are warmed first (building Presidio
takes seconds per process and is reported apart). Writes `curate.json` and `curate.png`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from curate import dedup, pipeline, synthetic
from curate.config import CurateConfig
from curate.records import records_from_rows

GOAL_PER_MIN = 50_000


def _warm(config_json: str) -> float:
    t0 = time.perf_counter()
    pipeline.scrubber(config_json)
    return time.perf_counter() - t0


def _chunk(args):
    records, config = args
    return pipeline.scrub_and_sign(records, config)


def run_curate_bench(out_dir: Path, traces: int = 6000, tokens: int = 500,
                     workers: tuple[int, ...] = (1, 2), chunk: int = 250) -> dict:
    config = CurateConfig(chunk_size=chunk)
    config.dedup.semantic = False  # the bench traces carry no embeddings
    records = records_from_rows(synthetic.bench_traces(traces, tokens=tokens), [])
    words = sum(len(r.text().split()) for r in records) / len(records)
    report: dict = {"traces": traces, "mean_words_per_trace": round(words), "chunk": chunk,
                    "goal_traces_per_min": GOAL_PER_MIN, "runs": []}

    # one core, stage by stage
    sample = records[: min(1000, traces)]
    report["scrubber_init_s"] = round(_warm(config.scrub.model_dump_json()), 2)
    t0 = time.perf_counter()
    scrubbed, stats = pipeline.scrubber(config.scrub.model_dump_json()).scrub(sample)
    t1 = time.perf_counter()
    texts = [r.text() for r in scrubbed]
    chunk_ = pipeline.Chunk(scrubbed, dedup.signatures(scrubbed, config.dedup, texts),
                            [dedup.content_hash(t) for t in texts], stats)
    t2 = time.perf_counter()
    pipeline.deduplicate(chunk_, config)
    t3 = time.perf_counter()
    report["per_trace_ms_one_core"] = {"scrub": 1000 * (t1 - t0) / len(sample),
                                       "hash_and_minhash": 1000 * (t2 - t1) / len(sample),
                                       "exact_and_lsh": 1000 * (t3 - t2) / len(sample)}
    report["scrub_replaced_in_sample"] = stats["replaced"]

    chunks = [(records[i:i + chunk], config) for i in range(0, len(records), chunk)]
    for n in workers:
        with ProcessPoolExecutor(n) as pool:
            list(pool.map(_warm, [config.scrub.model_dump_json()] * n))
            t0 = time.perf_counter()
            parts = list(pool.map(_chunk, chunks))
            t1 = time.perf_counter()
        kept, dstats = pipeline.deduplicate(pipeline.merge(parts, config), config)
        t2 = time.perf_counter()
        rate = traces / (t2 - t0) * 60
        report["runs"].append({"workers": n, "scrub_minhash_s": round(t1 - t0, 2),
                               "dedup_s": round(t2 - t1, 2), "traces_per_min": round(rate),
                               "kept": len(kept),
                               "dropped": {"exact": dstats["exact"]["dropped"],
                                           "near": dstats["near"]["dropped"]}})
    base = report["runs"][0]["traces_per_min"]
    for run in report["runs"]:
        run["speedup"] = round(run["traces_per_min"] / base, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "curate.json").write_text(json.dumps(report, indent=2))
    _plot(report, out_dir / "curate.png")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    runs = report["runs"]
    ax.bar([str(r["workers"]) for r in runs], [r["traces_per_min"] for r in runs], color="#4477aa")
    ax.axhline(report["goal_traces_per_min"], color="#cc6677", linestyle="--", label="goal")
    ax.set_xlabel("worker processes")
    ax.set_ylabel("traces / min (scrub + dedup)")
    ax.set_title(f"~{report['mean_words_per_trace']}-word traces")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
