"""The `curate` Prefect flow: consented traces → scrubbed, deduplicated, filtered, decontaminated
SFT / DPO / distillation datasets with data cards, and the dataset index erasure relies on.

Reads top to bottom; every step is a task wrapping a function from `curate/`. The scrub step is
chunked (`CurateConfig.chunk_size`) and mapped, so any Prefect task runner fans it out: a process
pool on one machine (`--workers N`), or Dask / Ray across machines (`--dask ADDRESS` with
`prefect-dask` installed). Chunk results are cached by input hash under `$SHOAL_HOME/cache`, so an
unchanged chunk is not scrubbed twice; the cache is wiped whenever erasure forces a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from curate import pipeline
from curate.card import write_dataset
from curate.config import CurateConfig
from curate.decontam import EvalIndex
from curate.records import Record, records_from_rows
from flows.config import ShoalConfig


def cache_storage(shoal: ShoalConfig) -> str:
    """The result storage of the scrub step: `$SHOAL_HOME/cache/curate`, the directory erasure wipes.

    Set by the flow itself, so every way of running it (`run_curate`, a served deployment, a
    worker) caches there and never in Prefect's default storage. Prefect wants it saved as a
    block; one block per cache directory."""
    from prefect.filesystems import LocalFileSystem

    cache = shoal.cache_dir / "curate"
    cache.mkdir(parents=True, exist_ok=True)
    block = f"shoal-cache-{hashlib.sha256(str(cache).encode()).hexdigest()[:16]}"
    LocalFileSystem(basepath=str(cache)).save(block, overwrite=True)
    return f"local-file-system/{block}"


# Only the scrub step persists results (scrubbed text, for input-hash caching); raw traces and
# later steps stay in memory, so the cache directory never holds unscrubbed text.
@task(name="load consented traces", retries=2, retry_delay_seconds=1, persist_result=False,
      cache_policy=NO_CACHE)
def load_traces(home: str) -> dict:
    store = ShoalConfig.at(home).trace_store()
    return store.curation_snapshot()


@task(name="scrub + minhash chunk", retries=2, retry_delay_seconds=1,
      cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def scrub_chunk(records: list[Record], config: CurateConfig):
    return pipeline.scrub_and_sign(records, config)


@task(name="dedup", persist_result=False, cache_policy=NO_CACHE)
def dedup_task(chunk: pipeline.Chunk, config: CurateConfig):
    return pipeline.deduplicate(chunk, config)


@task(name="decontaminate + filter", persist_result=False, cache_policy=NO_CACHE)
def select_task(records, eval_texts: list[str], config: CurateConfig):
    return pipeline.select(records, EvalIndex(eval_texts, config.decontam_ngram), config)


@task(name="build sets", persist_result=False, cache_policy=NO_CACHE)
def build_task(pools, config: CurateConfig):
    return pipeline.build(pools, config)


@task(name="write datasets + index", retries=2, retry_delay_seconds=1, persist_result=False,
      cache_policy=NO_CACHE)
def write_task(home: str, built: dict, card_fields: dict) -> dict:
    """Write each set with its card, record its members, and point `latest.json` at it."""
    shoal = ShoalConfig.at(home)
    root = shoal.datasets_dir
    root.mkdir(parents=True, exist_ok=True)
    store = shoal.trace_store()
    latest_path = root / "latest.json"
    latest = json.loads(latest_path.read_text()) if latest_path.exists() else {}
    out = {}
    for kind, (splits, stats) in built.items():
        fields = {**card_fields, "counts": {**card_fields["counts"], "builder": stats}}
        card = write_dataset(root, kind, splits, fields)
        store.forget_dataset(card.dataset_id)  # idempotent re-runs do not double the index
        store.add_dataset_members(card.dataset_id,
                                  [r["request_id"] for s in splits.values() for r in s])
        latest[kind] = card.dataset_id
        out[kind] = {"dataset_id": card.dataset_id, "path": str(root / card.dataset_id),
                     "splits": card.splits, "rows_digest": card.rows_digest}
    tmp = latest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(latest, indent=2, sort_keys=True))
    tmp.replace(latest_path)
    return out


@task(name="drop datasets marked for rebuild", persist_result=False, cache_policy=NO_CACHE)
def drop_marked(home: str, keep: list[str]) -> list[str]:
    """Delete every dataset an erasure marked (the fresh build above replaces it)."""
    shoal = ShoalConfig.at(home)
    store = shoal.trace_store()
    dropped = []
    for dataset_id in store.datasets_marked_for_rebuild():
        if dataset_id in keep:  # rebuilt with identical rows: nothing erased was in it
            continue
        shutil.rmtree(shoal.datasets_dir / dataset_id, ignore_errors=True)
        store.forget_dataset(dataset_id)
        dropped.append(dataset_id)
    if dropped:  # cached chunk results may hold erased text: start the cache afresh
        shutil.rmtree(shoal.cache_dir / "curate", ignore_errors=True)
    return dropped


# One chunk at a time unless a runner is chosen (`run_curate`): the scrubber is built once per
# process and not shared between threads. No `log_prints`: libraries that capture stdout around
# `dis.dis` (dill, under `datasets`' fingerprinting) would have their capture logged line by line.
@flow(name="curate", persist_result=False,
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def curate(home: str, config: dict | None = None, eval_texts: list[str] | None = None) -> dict:
    """Curate every consented trace under `home` into datasets; returns their ids and counts."""
    log = get_run_logger()
    cfg = CurateConfig.model_validate(config or {})
    if eval_texts is None:
        from train.evalsets import decontamination_texts

        eval_texts = decontamination_texts()

    snapshot = load_traces(home)
    records = records_from_rows(snapshot["traces"], snapshot["feedback"])
    log.info(f"{len(records)} consented traces ({snapshot['excluded_inactive_grant']} excluded: "
             f"grant expired or revoked)")

    chunks = [records[i:i + cfg.chunk_size] for i in range(0, len(records), cfg.chunk_size)]
    scrub = scrub_chunk.with_options(result_storage=cache_storage(ShoalConfig.at(home)))
    futures = scrub.map(chunks, unmapped(cfg)) if chunks else []
    merged = pipeline.merge([f.result() for f in futures], cfg)
    cached = sum(f.state.name == "Cached" for f in futures)
    scrub_stats = merged.stats
    log.info(f"scrubbed: {scrub_stats['replaced']} ({cached}/{len(chunks)} chunks from cache)")

    unique, dedup_stats = dedup_task(merged, cfg)
    pools, select_stats = select_task(unique, eval_texts, cfg)
    built = build_task(pools, cfg)

    context = get_run_context()
    card_fields = {
        "source": snapshot["source"],
        "counts": {"traces": len(records),
                   "excluded_inactive_grant": snapshot["excluded_inactive_grant"],
                   "scrub": scrub_stats, "dedup": dedup_stats, **select_stats},
        "config": cfg.model_dump(), "config_digest": cfg.digest(),
        "flow_run_id": str(context.flow_run.id),
        "scrubber": pipeline.scrubber(cfg.scrub.model_dump_json()).capabilities(),
        "decontamination": select_stats["decontamination"],
    }
    written = write_task(home, built, card_fields)
    dropped = drop_marked(home, [w["dataset_id"] for w in written.values()])
    for kind, w in written.items():
        log.info(f"{kind}: {w['dataset_id']} train={w['splits']['train']} eval={w['splits']['eval']}")
    return {"datasets": written, "rebuilt_from": dropped, "counts": card_fields["counts"],
            "chunks": len(chunks), "chunks_cached": cached,
            "flow_run_id": card_fields["flow_run_id"]}


def run_curate(shoal: ShoalConfig, config: CurateConfig | None = None, *, workers: int = 1,
               dask_address: str | None = None, eval_texts: list[str] | None = None) -> dict:
    """Run the flow with a task runner chosen for this machine (or a Dask cluster)."""
    from prefect.task_runners import ProcessPoolTaskRunner

    flow_ = curate
    if dask_address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise RuntimeError("--dask needs the prefect-dask package: pip install prefect-dask") from e
        flow_ = curate.with_options(task_runner=DaskTaskRunner(address=dask_address))
    elif workers > 1:
        flow_ = curate.with_options(task_runner=ProcessPoolTaskRunner(max_workers=workers))
    return flow_(str(shoal.home), (config or CurateConfig()).model_dump(), eval_texts)


def latest(shoal: ShoalConfig) -> dict[str, str]:
    """{kind: dataset id} of the newest build (empty before the first run)."""
    path = Path(shoal.datasets_dir) / "latest.json"
    return json.loads(path.read_text()) if path.exists() else {}
