"""Dedup at three strengths: exact (normalised hash), near (MinHash LSH) and semantic (embeddings).

Each function keeps the first record of every duplicate group (records come ordered by time, so the
earliest wins) and returns the survivors with counters. MinHash signatures are computed per chunk
(`signatures`, parallelisable); the LSH index that compares them is global and cheap.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence

import numpy as np

from curate.config import DedupConfig
from curate.records import Record

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, one space between words: what exact dedup hashes."""
    return _SPACE.sub(" ", text.lower()).strip()


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


def exact(records: Sequence[Record], hashes: Sequence[bytes] | None = None) -> tuple[list[Record], dict]:
    """Keep the first of every group with the same normalised text (`hashes` if precomputed)."""
    seen: set[bytes] = set()
    kept = []
    for i, r in enumerate(records):
        h = hashes[i] if hashes is not None else content_hash(r.text())
        if h not in seen:
            seen.add(h)
            kept.append(r)
    return kept, {"in": len(records), "dropped": len(records) - len(kept)}


SCHEME = "affine32"
"""datasketch's permutation scheme: 32-bit hash values, the default since datasketch 2.0."""
_MASK = np.uint64(0xFFFFFFFF)
_MULT = np.uint64(0x01000193)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the word n-grams of `text`, stable across processes and machines.

    Words are hashed once (CRC-32) and combined into n-gram hashes with numpy, which is several
    times faster than hashing every n-gram string.
    """
    words = np.fromiter((zlib.crc32(w.encode()) for w in _WORD.findall(text.lower())),
                        dtype=np.uint64)
    if len(words) == 0:
        return np.zeros(1, dtype=np.uint64)
    n = min(n, len(words))
    h = np.zeros(len(words) - n + 1, dtype=np.uint64)
    for k in range(n):
        h = ((h * _MULT) ^ words[k:len(words) - n + 1 + k]) & _MASK
    return np.unique(h)


def signatures(records: Sequence[Record], config: DedupConfig,
               texts: Sequence[str] | None = None) -> np.ndarray:
    """MinHash signatures, shape (len(records), num_perm): the parallel half of near dedup."""
    from datasketch import MinHash

    out = None
    for i, r in enumerate(records):
        m = MinHash(num_perm=config.num_perm, seed=1, hashfunc=int, scheme=SCHEME)
        text = texts[i] if texts is not None else r.text()
        m.update_batch(shingle_hashes(text, config.shingle).tolist())
        if out is None:
            out = np.empty((len(records), config.num_perm), dtype=m.hashvalues.dtype)
        out[i] = m.hashvalues
    return out if out is not None else np.empty((0, config.num_perm), dtype=np.uint32)


def near(records: Sequence[Record], sigs: np.ndarray, config: DedupConfig) -> tuple[list[Record], dict]:
    """Drop every record whose estimated Jaccard similarity to an earlier kept one passes the threshold."""
    from datasketch import LeanMinHash, MinHashLSH

    assert len(records) == len(sigs), "one signature per record"
    lsh = MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm)
    kept, pairs = [], 0
    for i, r in enumerate(records):
        m = LeanMinHash(seed=1, hashvalues=sigs[i], scheme=SCHEME)
        candidates = lsh.query(m)
        # LSH proposes candidates; keep the estimate honest by checking the signature agreement
        if any(float(np.mean(sigs[j] == sigs[i])) >= config.near_threshold for j in candidates):
            pairs += 1
            continue
        lsh.insert(i, m)
        kept.append(r)
    return kept, {"in": len(records), "dropped": pairs, "threshold": config.near_threshold}


def semantic(records: Sequence[Record], config: DedupConfig) -> tuple[list[Record], dict]:
    """Drop records whose embedding is within the cosine threshold of an earlier kept one."""
    with_vec = [i for i, r in enumerate(records) if r.vector is not None]
    stats = {"in": len(records), "dropped": 0, "without_embedding": len(records) - len(with_vec),
             "threshold": config.semantic_threshold}
    if not config.semantic or len(with_vec) < 2:
        stats["skipped"] = not config.semantic
        return list(records), stats
    vecs = np.asarray([records[i].vector for i in with_vec], dtype=np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    dropped: set[int] = set()
    kept_rows: list[int] = []
    block = 1024
    for start in range(0, len(with_vec), block):  # blocked so memory stays O(n · block)
        rows = list(range(start, min(start + block, len(with_vec))))
        for row in rows:
            if kept_rows:
                sims = vecs[kept_rows] @ vecs[row]
                if float(sims.max()) >= config.semantic_threshold:
                    dropped.add(with_vec[row])
                    continue
            kept_rows.append(row)
    stats["dropped"] = len(dropped)
    return [r for i, r in enumerate(records) if i not in dropped], stats
