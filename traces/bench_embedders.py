"""The embedder comparison of `shoal bench traces`: speed on 2 cores, and semantic-dedup agreement
with today's MiniLM on the curation benchmark's corpus (`curate.semantic_eval`).

For each candidate: texts/s, and the dedup it does. The reference is MiniLM at the curation
default it was set for (0.98). A candidate's threshold is calibrated on one corpus (seed 0) and
its agreement measured on another (seed 1), never on what it was tuned on.
"""

from __future__ import annotations

import time

import numpy as np

from curate import semantic_eval
from traces.embedders import load
from traces.ingest import embed_text

REFERENCE = "minilm"
REFERENCE_THRESHOLD = 0.98
THRESHOLDS = (0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995)


def _timed(name: str, texts: list[str]) -> tuple[np.ndarray, float]:
    embedder = load(name)
    embedder.embed(texts[:8])  # warm: first call loads and builds
    t0 = time.perf_counter()
    vectors = embedder.embed(texts)
    return vectors, len(texts) / (time.perf_counter() - t0)


def compare_embedders(names: tuple[str, ...], traces: int) -> dict:
    """{name: {texts_per_s, threshold, agreement on the held-out corpus}} and the reference's."""
    corpora = {}
    for seed in (0, 1):
        rows = semantic_eval.corpus(traces, seed)
        corpora[seed] = (semantic_eval.records_of(rows), [embed_text(r) for r in rows])
    vectors = {(name, seed): _timed(name, texts) for name in (REFERENCE, *names)
               for seed, (_, texts) in corpora.items()}
    reference = {seed: semantic_eval.dropped(corpora[seed][0], vectors[REFERENCE, seed][0],
                                             REFERENCE_THRESHOLD) for seed in corpora}
    report = {"corpus_texts": len(corpora[1][1]), "reference": REFERENCE,
              "reference_threshold": REFERENCE_THRESHOLD, "embedders": {}}
    for name in (REFERENCE, *names):
        if name == REFERENCE:
            threshold = REFERENCE_THRESHOLD
        else:
            threshold = semantic_eval.calibrate(corpora[0][0], reference[0], vectors[name, 0][0],
                                                THRESHOLDS)
        held_out = semantic_eval.dropped(corpora[1][0], vectors[name, 1][0], threshold)
        cosine = float(np.mean(np.sum(vectors[name, 1][0] * vectors[REFERENCE, 1][0], axis=1))) \
            if name.startswith("minilm") else None
        report["embedders"][name] = {
            "version": load(name).version,
            "texts_per_s": round(min(vectors[name, s][1] for s in corpora), 1),
            "threshold": threshold,
            "agreement": semantic_eval.agreement(reference[1], held_out),
            "mean_cosine_to_reference": round(cosine, 4) if cosine is not None else None}
    return report
