"""Rows of the trace store, as pydantic models: the single source of the LanceDB tables' columns.

`traces/tables.py` derives each table's Arrow schema from these models. They stay plain pydantic
(no lancedb import) because the gateway imports them on its request path; only the embedding
column, which exists in LanceDB alone, is declared there (`Vector(EMBED_DIM)`).

Consent is data: every trace row carries the grant that allowed it (id, scopes, expiry).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

ROLES = ("app", "contributor", "maintainer")
SCOPES = ("sft", "dpo", "eval", "distill", "drafting")
"""What a grant may allow. `drafting`: the contributor's text may teach the gateway's suffix index
for every caller (whose accepted drafts then reveal that someone sent it); never implied by
another scope."""
EMBED_DIM = 384

UtcTime = Annotated[datetime, Field(json_schema_extra={"tz": "UTC"})]
"""A timestamp; stored as Arrow `timestamp[us, tz=UTC]`."""


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


class Account(BaseModel):
    account_id: str
    # a checked string, not a Literal: the column is a plain string and Literal has no Arrow type
    role: Annotated[str, AfterValidator(_one_of(ROLES))]
    name: str
    created_at: UtcTime


class ApiKey(BaseModel):
    key_id: str
    account_id: str
    key_hash: str = Field(description="SHA-256 of the secret; the secret itself is never stored")
    created_at: UtcTime
    revoked: bool = False


class Grant(BaseModel):
    grant_id: str
    contributor_id: str
    scopes: list[str]
    created_at: UtcTime
    expires_at: UtcTime
    revoked: bool = False

    def active(self, now: datetime) -> bool:
        return not self.revoked and self.expires_at > now


class Trace(BaseModel):
    """One recorded request (the design's trace contract), as the durable log holds it; the
    stored row adds the embedding (`traces.tables.TraceRow`)."""

    request_id: str = Field(description="unique per request; the idempotency key")
    trace_id: str = Field(description="groups an agent run; the client may pass it")
    parent_id: str = ""
    contributor_id: str
    grant_id: str
    grant_scopes: list[str]
    grant_expires_at: UtcTime
    model_version: str
    messages_json: str = Field(description="the request's messages, OpenAI format, tool calls too")
    completion: str
    tool_calls_json: str = "[]"
    tools_json: str = Field("[]", description="the tools the request offered the model (OpenAI "
                            "`tools` JSON schemas; none when `tool_choice` was `none`), so a "
                            "training row renders the prompt serving rendered")
    sampling_json: str = Field("{}", description="the sampling parameters generation used "
                               "(temperature, top_p, max_tokens, seed), not the raw request")
    prompt_tokens: int
    completion_tokens: int
    route: list[str]
    routing_policy: str = Field("any", description="the routing policies the route met "
                                "(`any`, `allowlist`, `attested`, joined by `+`)")
    proof_status: str
    drafter_json: str = "{}"
    latency_ms: float
    ttft_ms: float
    created_at: UtcTime


class Feedback(BaseModel):
    feedback_id: str
    request_id: str
    contributor_id: str
    rating: int | None = None
    chosen: str = ""
    rejected: str = ""
    correction: str = ""
    created_at: UtcTime


class DatasetMember(BaseModel):
    """A trace that went into a dataset (erasure marks the dataset for rebuild)."""

    dataset_id: str
    request_id: str


class RebuildMark(BaseModel):
    """A dataset that must be rebuilt because traces it used were erased."""

    dataset_id: str
    reason: str
    marked_at: UtcTime


class Receipt(BaseModel):
    """What one erasure removed, kept for the contributor."""

    model_config = ConfigDict(populate_by_name=True)
    receipt_id: str
    contributor_id: str
    # the column is `json`; a field of that name would shadow BaseModel.json, so the field
    # carries the column name as its alias (traces/tables.py names columns by alias)
    body: str = Field(alias="json", description="the receipt, as JSON")
    created_at: UtcTime


class FeedbackIn(BaseModel):
    """Body of POST /v1/feedback: at least one of rating, chosen/rejected, correction."""

    request_id: str = Field(validation_alias=AliasChoices("request_id", "trace_id"),
                            description="`shoal.request_id` of the completion (`trace_id`, its "
                                        "older name, is accepted too)")
    rating: int | None = Field(None, ge=-1, le=5)
    chosen: str | None = None
    rejected: str | None = None
    correction: str | None = None
