"""The LanceDB tables of the trace store: each table's name, its row model, and its Arrow schema,
derived from the pydantic models in `traces/schemas.py` (the single source of the columns).

It imports lancedb, so only the store imports it, when it opens its tables; the models themselves
stay light for the gateway. It knows nothing about consent, capture or erasure.
"""

from __future__ import annotations

import pyarrow as pa
from lancedb.pydantic import LanceModel, Vector, pydantic_to_schema
from pydantic import BaseModel, Field

from traces.schemas import (EMBED_DIM, Account, ApiKey, DatasetMember, Feedback, Grant,
                            RebuildMark, Receipt, Trace)


class TraceRow(Trace, LanceModel):
    """A trace as the `traces` table stores it: the logged record plus its embedding.

    Rows are ingested without one (`vector` and `embedder` null); the embedding pass fills both
    later, in batches (traces/ingest.py)."""

    vector: Vector(EMBED_DIM) | None = None  # type: ignore[valid-type]
    embedder: str | None = Field(None, description="version of the embedder that made `vector`; "
                                 "null until the embedding pass has reached the row")


TABLES: dict[str, type[BaseModel]] = {
    "accounts": Account,
    "api_keys": ApiKey,
    "grants": Grant,
    "traces": TraceRow,
    "feedback": Feedback,
    "dataset_members": DatasetMember,
    "datasets_to_rebuild": RebuildMark,
    "receipts": Receipt,
}


ADDED_LATER: dict[str, tuple[str, ...]] = {"traces": ("routing_policy", "tools_json")}
"""Columns a table gained after it first shipped, in the order they came: they go last, where
opening an older table adds them (`add_columns` appends), so old and new tables share one order."""


def arrow_schema(model: type[BaseModel], last: tuple[str, ...] = ()) -> pa.Schema:
    """The Arrow schema of a row model, as the tables on disk have it.

    Two adaptations to `lancedb.pydantic.pydantic_to_schema`, so that tables created before the
    schemas were derived still open and are rewritten with the same columns: every column is
    nullable (those tables were created from all-nullable schemas; pydantic_to_schema makes a
    non-optional field non-nullable), and a field with an alias is named by its alias (the
    receipts' `json` column, a name no pydantic field can have).
    """
    derived = pydantic_to_schema(model)
    fields = [pa.field(model.model_fields[f.name].alias or f.name, f.type, nullable=True)
              for f in derived]
    return pa.schema([f for f in fields if f.name not in last]
                     + [f for n in last for f in fields if f.name == n])


SCHEMAS: dict[str, pa.Schema] = {name: arrow_schema(model, ADDED_LATER.get(name, ()))
                                 for name, model in TABLES.items()}
