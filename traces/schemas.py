"""Rows of the trace store, as pydantic models (the LanceDB tables' schemas derive from them).

Consent is data: every trace row carries the grant that allowed it (id, scopes, expiry).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

ROLES = ("app", "contributor", "maintainer")
SCOPES = ("sft", "dpo", "eval", "distill")
EMBED_DIM = 384


class Account(BaseModel):
    account_id: str
    role: Literal["app", "contributor", "maintainer"]
    name: str
    created_at: datetime


class ApiKey(BaseModel):
    key_id: str
    account_id: str
    key_hash: str = Field(description="SHA-256 of the secret; the secret itself is never stored")
    created_at: datetime
    revoked: bool = False


class Grant(BaseModel):
    grant_id: str
    contributor_id: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    revoked: bool = False

    def active(self, now: datetime) -> bool:
        return not self.revoked and self.expires_at > now


class Trace(BaseModel):
    """One recorded request (the design's trace contract)."""

    request_id: str = Field(description="unique per request; the idempotency key")
    trace_id: str = Field(description="groups an agent run; the client may pass it")
    parent_id: str = ""
    contributor_id: str
    grant_id: str
    grant_scopes: list[str]
    grant_expires_at: datetime
    model_version: str
    messages_json: str = Field(description="the request's messages, OpenAI format, tool calls too")
    completion: str
    tool_calls_json: str = "[]"
    sampling_json: str = "{}"
    prompt_tokens: int
    completion_tokens: int
    route: list[str]
    proof_status: str
    drafter_json: str = "{}"
    latency_ms: float
    ttft_ms: float
    created_at: datetime


class Feedback(BaseModel):
    feedback_id: str
    request_id: str
    contributor_id: str
    rating: int | None = None
    chosen: str = ""
    rejected: str = ""
    correction: str = ""
    created_at: datetime


class FeedbackIn(BaseModel):
    """Body of POST /v1/feedback: at least one of rating, chosen/rejected, correction."""

    trace_id: str = Field(description="the request id returned with the completion")
    rating: int | None = Field(None, ge=-1, le=5)
    chosen: str | None = None
    rejected: str | None = None
    correction: str | None = None
