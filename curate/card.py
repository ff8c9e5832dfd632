"""Datasets on disk and their data cards.

A dataset is a directory: `train/` and `eval/` as HF `datasets` splits in a TRL format, and
`card.json`, which records where the rows came from (trace table and version, a digest of the
trace ids), counts at each stage, the config and its digest, the flow run id, and what the scrubber
could and could not detect. Its id is `<kind>-<first 16 hex of the rows digest>`, so the same rows
give the same id and any change of content gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field


class DataCard(BaseModel):
    dataset_id: str
    kind: str = Field(description="sft, dpo or distill")
    format: str = Field(description="the TRL format of the rows")
    rows_digest: str = Field(description="SHA-256 of the canonical JSON of every row, in order")
    created_at: str
    source: dict = Field(description="trace store URI, table and table version")
    trace_ids: dict = Field(description="count and SHA-256 of the sorted request ids used")
    counts: dict = Field(description="records in and out of every stage, drops per filter")
    splits: dict[str, int]
    config: dict
    config_digest: str
    flow_run_id: str
    scrubber: dict = Field(description="what the scrubber could and could not detect")
    decontamination: dict
    extra: dict = {}


FORMATS = {"sft": "conversational language modeling (messages)",
           "dpo": "conversational preference (prompt / chosen / rejected)",
           "distill": "conversational language modeling (messages): served model outputs"}


def rows_digest(splits: dict[str, Sequence[dict]]) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        for row in splits[name]:
            h.update(name.encode() + b"\0")
            h.update(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def ids_digest(request_ids: Sequence[str]) -> dict:
    ids = sorted(set(request_ids))
    return {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def write_dataset(root: Path, kind: str, splits: dict[str, list[dict]], card_fields: dict) -> DataCard:
    """Write the splits and the card under `root/<dataset id>/` atomically; returns the card."""
    import datasets

    digest = rows_digest(splits)
    dataset_id = f"{kind}-{digest[:16]}"
    card = DataCard(dataset_id=dataset_id, kind=kind, format=FORMATS[kind], rows_digest=digest,
                    created_at=datetime.now(UTC).isoformat(),
                    trace_ids=ids_digest([r["request_id"] for s in splits.values() for r in s]),
                    splits={name: len(rows) for name, rows in splits.items()}, **card_fields)
    final = root / dataset_id
    if (final / "card.json").exists():
        return DataCard.model_validate_json((final / "card.json").read_text())
    tmp = root / f".{dataset_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    for name, rows in splits.items():
        # an empty split still gets a directory so every dataset has the same layout
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp / name))
    (tmp / "card.json").write_text(card.model_dump_json(indent=2))
    try:
        os.rename(tmp, final)
    except OSError:  # another writer got there first with the same rows
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def load_card(path: Path) -> DataCard:
    return DataCard.model_validate_json((Path(path) / "card.json").read_text())


def load_split(path: Path, split: str = "train") -> list[dict]:
    import datasets

    if load_card(path).splits.get(split, 0) == 0:  # an empty split has no columns to load
        return []
    return datasets.load_from_disk(str(Path(path) / split)).to_list()
