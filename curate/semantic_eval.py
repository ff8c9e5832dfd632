"""How closely two embedders agree on semantic dedup: the same records dropped, or not.

The corpus is the curation benchmark's (`synthetic.bench_traces`: agent-like traces, 5 % exact
copies) plus graded near copies, each a trace with 1–30 % of its answer's words replaced, so
that some pairs fall on either side of any threshold and the comparison is not decided by exact
copies alone. `dropped` runs `dedup.semantic` itself; `agreement` compares the two sets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from curate import dedup, synthetic
from curate.config import DedupConfig
from curate.records import Record, records_from_rows

RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
"""Shares of answer words replaced in the graded near copies."""


def corpus(n: int, seed: int, tokens: int = 500) -> list[dict]:
    """`n` benchmark traces plus `n // 10` graded near copies, shuffled (seeded)."""
    rows = synthetic.bench_traces(n, tokens=tokens, seed=seed)
    rng = random.Random(seed + 1)
    out = list(rows)
    for k in range(n // 10):
        src = rows[rng.randrange(len(rows))]
        words = src["completion"].split()
        rate = RATES[k % len(RATES)]
        for j in rng.sample(range(len(words)), max(1, int(len(words) * rate))):
            words[j] = rng.choice(words)
        out.append({**src, "request_id": f"near{k:05d}", "completion": " ".join(words)})
    rng.shuffle(out)
    return out


def dropped(records: Sequence[Record], vectors: np.ndarray, threshold: float) -> set[str]:
    """Request ids semantic dedup drops with these vectors at this threshold."""
    with_vectors = [replace(r, vector=tuple(map(float, v))) for r, v in zip(records, vectors)]
    kept, _ = dedup.semantic(with_vectors, DedupConfig(semantic_threshold=threshold))
    return {r.request_id for r in records} - {r.request_id for r in kept}


def agreement(reference: set[str], candidate: set[str]) -> dict:
    """Jaccard similarity of the two dropped sets, and what each found that the other did not."""
    union = reference | candidate
    return {"reference_dropped": len(reference), "candidate_dropped": len(candidate),
            "both": len(reference & candidate), "only_reference": len(reference - candidate),
            "only_candidate": len(candidate - reference),
            "jaccard": round(len(reference & candidate) / len(union), 4) if union else 1.0}


def calibrate(records: Sequence[Record], reference: set[str], vectors: np.ndarray,
              thresholds: Sequence[float]) -> float:
    """The threshold whose dropped set agrees best with `reference` (ties: the higher one,
    which drops less)."""
    scores = [(agreement(reference, dropped(records, vectors, t))["jaccard"], t)
              for t in thresholds]
    return max(scores)[1]


def records_of(rows: list[dict]) -> list[Record]:
    return records_from_rows(rows, [])
