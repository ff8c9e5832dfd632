"""Deciding whether a finished request becomes a trace, and building its row.

A request is recorded only when its key belongs to a contributor with an active grant, and the
request did not say `store: false` or opt out in `metadata` (`{"shoal_store": "false"}`). The row
carries the grant that allowed it. Writing is one fsync'd log append; LanceDB ingestion happens in
the trace store's background writer.

The caller (the gateway) hands over what it answered: the messages, the completion, the sampling
parameters it generated with and the outcome's counters. This module knows nothing about the
gateway's types; it reads only the attributes named in `RequestBody` and `RequestOutcome`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from traces.schemas import Account, Trace

if TYPE_CHECKING:
    from traces.store import TraceStore

OPT_OUT_VALUES = ("false", "0", "no", "off")


class RequestBody(Protocol):
    """What capture reads of a request body (the gateway's OpenAI request models have it)."""

    store: bool | None
    metadata: dict[str, str] | None


class RequestOutcome(Protocol):
    """What capture reads of a finished generation (the gateway's `Outcome` has it)."""

    prompt_tokens: int
    completion_tokens: int
    route: list[str]
    routing_policy: str
    drafter: str
    drafted: int
    accepted: int
    total_s: float
    first_token_s: float


def wants_storage(body: RequestBody) -> bool:
    """False when the request opted out (`store: false`, or `metadata.shoal_store` false)."""
    if getattr(body, "store", None) is False:
        return False
    meta = body.metadata or {}
    return str(meta.get("shoal_store", "true")).lower() not in OPT_OUT_VALUES


def capture(store: TraceStore | None, caller: Account | None, body: RequestBody, *,
            messages: list[dict[str, Any]], completion: str, tool_calls: list[dict[str, Any]],
            sampling: Mapping[str, Any], outcome: RequestOutcome, version: str,
            proof_status: str, tools: list[dict[str, Any]] | None = None) -> str | None:
    """Record the request if consent allows; returns the request id recorded, or None.

    `sampling` is what generation used (temperature, top_p, max_tokens, seed), resolved by the
    caller: `max_completion_tokens` over `max_tokens`, or the budget the gateway chose. `tools`:
    the tools the model was offered (`serve.gateway.chat_format.offered_tools`).
    """
    if store is None or caller is None or caller.role != "contributor" or not wants_storage(body):
        return None
    grant = store.active_grant(caller.account_id)
    if grant is None:
        return None
    meta = body.metadata or {}
    request_id = uuid.uuid4().hex
    store.record(Trace(
        request_id=request_id, trace_id=str(meta.get("trace_id") or request_id)[:64],
        parent_id=str(meta.get("parent_id") or "")[:64], contributor_id=caller.account_id,
        grant_id=grant.grant_id, grant_scopes=grant.scopes, grant_expires_at=grant.expires_at,
        model_version=version, messages_json=json.dumps(messages), completion=completion,
        tool_calls_json=json.dumps(tool_calls), tools_json=json.dumps(tools or []),
        sampling_json=json.dumps(dict(sampling)),
        prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
        route=outcome.route, routing_policy=outcome.routing_policy, proof_status=proof_status,
        drafter_json=json.dumps({"drafter": outcome.drafter, "drafted": outcome.drafted,
                                 "accepted": outcome.accepted}),
        latency_ms=1000 * outcome.total_s, ttft_ms=1000 * outcome.first_token_s,
        created_at=datetime.now(UTC)))
    return request_id
