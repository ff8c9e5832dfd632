"""Deciding whether a finished request becomes a trace, and building its row.

A request is recorded only when its key belongs to a contributor with an active grant, and the
request did not say `store: false` or opt out in `metadata` (`{"shoal_store": "false"}`). The row
carries the grant that allowed it. Writing is one fsync'd log append; LanceDB ingestion happens in
the trace store's background writer.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from traces.schemas import Account, Trace

OPT_OUT_VALUES = ("false", "0", "no", "off")


def wants_storage(body) -> bool:
    if getattr(body, "store", None) is False:
        return False
    meta = body.metadata or {}
    return str(meta.get("shoal_store", "true")).lower() not in OPT_OUT_VALUES


def capture(store, caller: Account | None, body, *, messages: list[dict[str, Any]],
            completion: str, tool_calls: list, outcome, version: str,
            proof_status: str) -> str | None:
    """Record the request if consent allows; returns the request id recorded, or None."""
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
        tool_calls_json=json.dumps(tool_calls),
        sampling_json=json.dumps({"temperature": body.temperature, "top_p": body.top_p,
                                  "max_tokens": body.max_tokens, "seed": body.seed}),
        prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
        route=outcome.route, proof_status=proof_status,
        drafter_json=json.dumps({"drafter": outcome.drafter, "drafted": outcome.drafted,
                                 "accepted": outcome.accepted}),
        latency_ms=1000 * outcome.total_s, ttft_ms=1000 * outcome.first_token_s,
        created_at=_now()))
    return request_id


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
