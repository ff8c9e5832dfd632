"""The `curate` Prefect flow: consented traces → scrubbed, deduplicated, filtered, decontaminated
SFT / DPO / distillation datasets with data cards, and the dataset index erasure relies on.

Reads top to bottom; every step is a task wrapping a function from `curate/`: the stages from
`curate.pipeline`, the datasets directory and `latest.json` from `curate.catalog`. What the flow
itself keeps is the I/O: reading the trace store, recording which traces went into which dataset
(the index erasure reads), and the chunk cache. `home` becomes a `ShoalConfig` once, at the top of
the flow; the tasks that need it are called directly, so they run in the flow's process.

The scrub step is chunked (`CurateConfig.chunk_size`) and mapped, so any Prefect task runner fans
it out: a process pool on one machine (`--workers N`), or Dask / Ray across machines (`--dask
ADDRESS` with `prefect-dask` installed). Chunk results are cached by input hash (the chunk's
records and the config, nothing else) under `$SHOAL_HOME/cache`, so an unchanged chunk is not
scrubbed twice; the cache is wiped whenever erasure forces a rebuild.

When an erasure marked datasets, the run that rebuilds them also flags, in the registry, every
version trained on them (`registry.notices`, signed with the release key): the new datasets leave
the erased rows out, the old weights are not retracted but say what they learnt from.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from curate import catalog, pipeline
from curate.config import CurateConfig
from curate.decontam import EvalIndex
from curate.records import Record, records_from_rows
from flows.config import ShoalConfig


def chunk_cache(shoal: ShoalConfig) -> Path:
    """Where the scrub step's results are kept: `$SHOAL_HOME/cache/curate`."""
    return shoal.cache_dir / "curate"


def cache_storage(shoal: ShoalConfig) -> str:
    """The result storage of the scrub step: `$SHOAL_HOME/cache/curate`, the directory erasure wipes.

    Set by the flow itself, so every way of running it (`run_curate`, a served deployment, a
    worker) caches there and never in Prefect's default storage. Prefect wants it saved as a
    block; one block per cache directory."""
    from prefect.filesystems import LocalFileSystem

    cache = chunk_cache(shoal)
    cache.mkdir(parents=True, exist_ok=True)
    block = f"shoal-cache-{hashlib.sha256(str(cache).encode()).hexdigest()[:16]}"
    LocalFileSystem(basepath=str(cache)).save(block, overwrite=True)
    return f"local-file-system/{block}"


# Only the scrub step persists results (scrubbed text, for input-hash caching); raw traces and
# later steps stay in memory, so the cache directory never holds unscrubbed text.
@task(name="load consented traces", retries=2, retry_delay_seconds=1, persist_result=False,
      cache_policy=NO_CACHE)
def load_traces(shoal: ShoalConfig) -> dict:
    return shoal.trace_store().curation_snapshot()


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
def write_task(shoal: ShoalConfig, built: dict, card_fields: dict) -> dict:
    """Write each set with its card, record its members, and point `latest.json` at it."""
    cards = catalog.write_sets(shoal.datasets_dir, built, card_fields)
    store = shoal.trace_store()
    for kind, card in cards.items():
        store.forget_dataset(card.dataset_id)  # idempotent re-runs do not double the index
        store.add_dataset_members(card.dataset_id, catalog.request_ids(built[kind][0]))
    catalog.point_latest(shoal.datasets_dir, {kind: c.dataset_id for kind, c in cards.items()})
    return {kind: catalog.entry(shoal.datasets_dir, card) for kind, card in cards.items()}


@task(name="flag versions trained on erased rows", persist_result=False, cache_policy=NO_CACHE)
def flag_lineage(shoal: ShoalConfig, marked: list[str]) -> list[str]:
    """Sign an erasure notice for every registry version trained (directly or through its
    parents) on a dataset an erasure marked; weights are not retracted, they are flagged. Runs
    before the marks are consumed, so a failure (e.g. no release key here) loses no mark."""
    from registry.publish import has_registry

    registry = shoal.store()
    if not marked or not has_registry(registry):
        return []
    from flows import signers
    from registry.notices import flag
    from registry.publish import current_root

    keys = signers.load(shoal, [signers.DEFAULT_KEYS["release"]])
    return [n.version for n in flag(registry, current_root(registry), marked, keys)]


@task(name="drop datasets marked for rebuild", persist_result=False, cache_policy=NO_CACHE)
def drop_marked(shoal: ShoalConfig, keep: list[str]) -> list[str]:
    """Delete every dataset an erasure marked (the fresh build above replaces it)."""
    store = shoal.trace_store()
    dropped = catalog.drop(shoal.datasets_dir, store.datasets_marked_for_rebuild(), keep)
    for dataset_id in dropped:
        store.forget_dataset(dataset_id)
    if dropped:  # cached chunk results may hold erased text: start the cache afresh
        shutil.rmtree(chunk_cache(shoal), ignore_errors=True)
    return dropped


# One chunk at a time unless a runner is chosen (`run_curate`): the scrubber is built once per
# process and not shared between threads. No `log_prints`: libraries that capture stdout around
# `dis.dis` (dill, under `datasets`' fingerprinting) would have their capture logged line by line.
@flow(name="curate", persist_result=False,
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def curate(home: str, config: dict | None = None, eval_texts: list[str] | None = None) -> dict:
    """Curate every consented trace under `home` into datasets; returns their ids and counts."""
    log = get_run_logger()
    shoal = ShoalConfig.at(home)
    cfg = CurateConfig.model_validate(config or {})
    if eval_texts is None:
        from train.evalsets import decontamination_texts

        eval_texts = decontamination_texts()

    snapshot = load_traces(shoal)
    records = records_from_rows(snapshot["traces"], snapshot["feedback"])
    log.info(f"{len(records)} consented traces ({snapshot['excluded_inactive_grant']} excluded: "
             f"grant expired or revoked)")

    chunks = [records[i:i + cfg.chunk_size] for i in range(0, len(records), cfg.chunk_size)]
    scrub = scrub_chunk.with_options(result_storage=cache_storage(shoal))
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
    written = write_task(shoal, built, card_fields)
    flagged = flag_lineage(shoal, shoal.trace_store().datasets_marked_for_rebuild())
    dropped = drop_marked(shoal, [w["dataset_id"] for w in written.values()])
    for kind, w in written.items():
        log.info(f"{kind}: {w['dataset_id']} train={w['splits']['train']} eval={w['splits']['eval']}")
    return {"datasets": written, "rebuilt_from": dropped, "flagged_versions": flagged,
            "counts": card_fields["counts"],
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

