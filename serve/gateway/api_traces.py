"""Trace-store endpoints of the gateway: feedback, contributors' own data, grants, erasure,
and maintainers' queries. Authorization is by role:

| endpoint | app | contributor | maintainer |
|---|---|---|---|
| POST /v1/feedback | 403 | own traces | 403 |
| GET /v1/traces, /v1/traces/export | 403 | own | any (`?contributor=`) |
| GET, DELETE /v1/traces/{id} | 403 | own | any |
| POST, GET, DELETE /v1/grants | 403 | own | 403 |
| DELETE /v1/contributors/me | 403 | erases own data | 403 |
| DELETE /v1/contributors/{id} | 403 | 403 | any |
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime, BaseModel, Field

from serve.exceptions import ApiError
from traces.schemas import SCOPES, FeedbackIn


MAX_LIMIT = 1000
"""Most traces one query returns (page with `until`)."""
Id = Annotated[str | None, Query(max_length=64)]


class GrantIn(BaseModel):
    scopes: list[Literal[SCOPES]] = Field(min_length=1, max_length=16)
    """What the traces may be used for (the schema lists them, so clients and fuzzers know)."""
    days: float = Field(30.0, gt=0, le=3650)


def router(state, caller_of) -> APIRouter:
    r = APIRouter()

    def store():
        if state.traces is None:
            raise ApiError(404, "this gateway has no trace store", "invalid_request_error")
        return state.traces

    def need(request: Request, *roles: str):
        caller = caller_of(request)
        if caller is None or caller.role not in roles:
            raise ApiError(403, f"this endpoint is for {' or '.join(roles)} keys",
                            "permission_error")
        return caller

    @r.post("/v1/feedback")
    def feedback(body: FeedbackIn, request: Request):
        caller = need(request, "contributor")
        return {"object": "feedback", **store().add_feedback(caller, body)}

    @r.get("/v1/traces")
    def list_traces(request: Request, contributor: Id = None,
                    since: Annotated[AwareDatetime | None, Query(
                        description="ISO 8601 with a time zone, e.g. 2026-12-01T00:00:00Z")] = None,
                    until: Annotated[AwareDatetime | None, Query(
                        description="ISO 8601 with a time zone")] = None,
                    model: Annotated[str | None, Query(max_length=128)] = None,
                    min_rating: Annotated[int | None, Query(ge=-1, le=5)] = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100):
        """Traces newest first; `since`/`until` need a time zone (a naive time is ambiguous)."""
        caller = need(request, "contributor", "maintainer")
        who = _whose(caller, contributor)
        rows = store().query(contributor_id=who, since=since, until=until, model_version=model,
                             min_rating=min_rating, limit=limit)
        return {"object": "list", "data": rows}

    @r.get("/v1/traces/export")
    def export(request: Request, contributor: Id = None):
        caller = need(request, "contributor", "maintainer")
        who = _whose(caller, contributor) or caller.account_id
        return PlainTextResponse(store().export_jsonl(who), media_type="application/x-ndjson")

    @r.get("/v1/traces/{request_id}")
    def get_trace(request_id: str, request: Request):
        caller = need(request, "contributor", "maintainer")
        row = store().get(request_id)
        if caller.role != "maintainer" and row["contributor_id"] != caller.account_id:
            raise ApiError(403, "not your trace", "permission_error")
        return {k: v for k, v in row.items() if k != "vector"}

    @r.delete("/v1/traces/{request_id}")
    def delete_trace(request_id: str, request: Request):
        caller = need(request, "contributor", "maintainer")
        return {"object": "erasure_receipt", **store().delete_trace(caller, request_id)}

    @r.post("/v1/grants")
    def create_grant(body: GrantIn, request: Request):
        caller = need(request, "contributor")
        return store().create_grant(caller, body.scopes, body.days).model_dump(mode="json")

    @r.get("/v1/grants")
    def list_grants(request: Request):
        caller = need(request, "contributor")
        return {"object": "list", "data": [g.model_dump(mode="json")
                                           for g in store().grants(caller.account_id)]}

    @r.delete("/v1/grants/{grant_id}")
    def revoke_grant(grant_id: str, request: Request):
        caller = need(request, "contributor")
        store().revoke_grant(caller, grant_id)
        return {"revoked": grant_id}

    @r.delete("/v1/contributors/me")
    def erase_me(request: Request):
        caller = need(request, "contributor")
        return {"object": "erasure_receipt", **store().erase_contributor(caller.account_id)}

    @r.delete("/v1/contributors/{contributor_id}")
    def erase_contributor(contributor_id: str, request: Request):
        need(request, "maintainer")
        return {"object": "erasure_receipt", **store().erase_contributor(contributor_id)}

    return r


def _whose(caller, contributor: str | None) -> str | None:
    if caller.role == "maintainer":
        return contributor
    if contributor not in (None, caller.account_id):
        raise ApiError(403, "contributors can read only their own traces", "permission_error")
    return caller.account_id
