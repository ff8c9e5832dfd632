"""The curation stages composed: the chunk step (scrub + MinHash, fanned out) and the global steps
(dedup, filters, decontamination, set building). The Prefect flow calls these same functions as
tasks; `shoal bench curate` calls them directly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from curate import builders, dedup, filters
from curate.config import CurateConfig, ScrubConfig
from curate.decontam import EvalIndex, decontaminate
from curate.records import Record


@functools.lru_cache(maxsize=2)
def scrubber(config_json: str):
    """One scrubber per process and config (building Presidio's engines takes seconds)."""
    from curate.scrub import Scrubber

    return Scrubber(ScrubConfig.model_validate_json(config_json))


class Chunk(NamedTuple):
    """What the parallel step returns for a chunk of records."""

    records: list[Record]
    """Scrubbed."""
    signatures: np.ndarray
    """MinHash signatures of the scrubbed text, one row per record."""
    hashes: list[bytes]
    """Normalised-text hashes for exact dedup."""
    stats: dict


def scrub_and_sign(records: Sequence[Record], config: CurateConfig) -> Chunk:
    """The parallel unit: scrub a chunk, then hash and MinHash the scrubbed text."""
    scrubbed, stats = scrubber(config.scrub.model_dump_json()).scrub(records)
    texts = [r.text() for r in scrubbed]
    return Chunk(scrubbed, dedup.signatures(scrubbed, config.dedup, texts),
                 [dedup.content_hash(t) for t in texts], stats)


def merge(chunks: Sequence[Chunk], config: CurateConfig) -> Chunk:
    """The chunks as one, in order."""
    if not chunks:
        return Chunk([], np.empty((0, config.dedup.num_perm), dtype=np.uint32), [],
                     merge_scrub_stats([]))
    return Chunk([r for c in chunks for r in c.records],
                 np.concatenate([c.signatures for c in chunks]),
                 [h for c in chunks for h in c.hashes], merge_scrub_stats([c.stats for c in chunks]))


def merge_scrub_stats(parts: Sequence[dict]) -> dict:
    replaced: dict[str, int] = {}
    for p in parts:
        for k, v in p["replaced"].items():
            replaced[k] = replaced.get(k, 0) + v
    return {"records": sum(p["records"] for p in parts),
            "records_changed": sum(p["records_changed"] for p in parts),
            "replaced": dict(sorted(replaced.items()))}


def deduplicate(chunk: Chunk, config: CurateConfig) -> tuple[list[Record], dict]:
    """Exact, then near, then semantic; signatures follow their records through each step."""
    records, sigs = chunk.records, chunk.signatures
    position = {id(r): i for i, r in enumerate(records)}
    kept, exact_stats = dedup.exact(records, chunk.hashes)
    kept_sigs = sigs[[position[id(r)] for r in kept]] if kept else sigs[:0]
    kept, near_stats = dedup.near(kept, kept_sigs, config.dedup)
    kept, semantic_stats = dedup.semantic(kept, config.dedup)
    return kept, {"exact": exact_stats, "near": near_stats, "semantic": semantic_stats}


def select(records: Sequence[Record], index: EvalIndex,
           config: CurateConfig) -> tuple[dict[str, list[Record]], dict]:
    """Decontaminate, then filter for quality: the pools each set builder draws from.

    SFT and distillation learn from the answer itself, so low-rated answers are dropped for them;
    DPO keeps low-rated answers (they are the rejected side) but not broken or empty ones.
    """
    clean, decontam_stats = decontaminate(records, index)
    answer_pool, quality_stats = filters.quality(clean, config.filters)
    preference_pool, _ = filters.quality(clean, config.filters, check_rating=False)
    # a correction fixes the answer, so it rescues a record whose own answer failed a filter
    in_answers = {r.request_id for r in answer_pool}
    in_preferences = {r.request_id for r in preference_pool}
    corrected = [r for r in clean if r.corrections]
    return ({"sft": answer_pool + [r for r in corrected if r.request_id not in in_answers],
             "dpo": preference_pool + [r for r in corrected if r.request_id not in in_preferences],
             "distill": answer_pool},
            {"decontamination": decontam_stats, "quality": quality_stats})


def build(pools: dict[str, list[Record]], config: CurateConfig) -> dict[str, tuple[dict, dict]]:
    """{kind: (splits, stats)} for SFT, DPO and distillation."""
    out = {}
    for kind in builders.KINDS:
        rows, stats = getattr(builders, kind)(pools[kind])
        out[kind] = (builders.split(rows, config.split), stats)
    return out
