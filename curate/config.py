"""One typed configuration for a curation run; its digest goes into every data card."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field


class ScrubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    """Presidio findings below this confidence are left in place."""
    ner: bool = True
    """Detect person names with spaCy NER when a spaCy model is installed locally (never fetched)."""
    spacy_model: str = "en_core_web_sm"
    """Which installed spaCy pipeline provides NER."""


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    near_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of word shingles above which two records are near duplicates."""
    num_perm: int = Field(128, ge=16, le=1024)
    """MinHash permutations (accuracy of the Jaccard estimate)."""
    shingle: int = Field(5, ge=1, le=16)
    """Words per shingle."""
    semantic_threshold: float = Field(0.995, gt=0.0, le=1.0)
    """Cosine similarity of embeddings above which two records say the same thing. Calibrated for
    the trace store's default (static) embedder to drop what MiniLM at 0.98 drops on the curation
    benchmark's corpus (`shoal bench traces`, docs/traces.md); with `minilm` vectors use 0.98."""
    semantic: bool = True
    """Run semantic dedup over the embeddings the trace store keeps (records without one are kept)."""


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_completion_chars: int = Field(1, ge=0)
    max_chars: int = Field(32_000, gt=0)
    """Prompt plus completion, in characters."""
    max_repetition: float = Field(0.5, gt=0.0, le=1.0)
    """Highest share of repeated word 3-grams a completion may have."""
    min_rating: int = Field(2, ge=-1, le=5)
    """Traces rated below this are dropped from SFT and distillation (they may still be DPO rejects)."""


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of agent runs (trace ids, never single requests) held out for evaluation."""
    seed: int = 0


class CurateConfig(BaseModel):
    """Everything a curation run depends on besides its input traces and evaluation sets."""

    model_config = ConfigDict(extra="forbid")
    scrub: ScrubConfig = ScrubConfig()
    dedup: DedupConfig = DedupConfig()
    filters: FilterConfig = FilterConfig()
    split: SplitConfig = SplitConfig()
    decontam_ngram: int = Field(13, ge=4, le=50)
    """Word n-gram length for decontamination against the evaluation sets."""
    chunk_size: int = Field(2_000, ge=1)
    """Records per scrub task: the unit a parallel task runner fans out."""

    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
