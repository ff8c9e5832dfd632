"""The dashboard's HTTP routes: the page shell and its assets (public: they hold no data), and
one JSON view per page (behind the same keys and roles as the API).

| path | who | what |
|---|---|---|
| GET /dashboard, /dashboard/{app.js, chart.js, style.css} | anyone | the page and its assets |
| GET /dashboard/api/me | any key | the caller's role and what each page needs |
| GET /dashboard/api/swarm | any key | nodes, route map, throughput, versions (maintainers: more) |
| GET /dashboard/api/contributor | contributor | feedback given, lineage of my traces |
| GET /dashboard/api/maintainer | maintainer | channels, candidates, flow runs, usage |

Grants, traces, export and erasure are not repeated here: the contributor page calls the trace
endpoints (`serve.gateway.api_traces`) directly, with the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve.config import DashboardConfig
from serve.exceptions import ApiError
from serve.gateway.dashboard import ASSETS
from serve.gateway.dashboard.registry_view import RegistryView, usage_totals
from serve.gateway.dashboard.swarm import Throughput, swarm_view

SECURITY_HEADERS = {
    # no inline script or style, nothing from elsewhere, no framing: an injected string in a
    # trace cannot run (the page also writes all data with textContent, never as HTML)
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return resources.files("serve.gateway.dashboard").joinpath("static", name).read_bytes()


def caller_of(request: Request):
    """The caller the guard authenticated (serve.gateway.guard), or None on an open gateway."""
    return getattr(request.state, "caller", None)


def router(state: Any, config: DashboardConfig) -> APIRouter:
    """The dashboard of the gateway whose state is `state` (serve.gateway.api.GatewayState)."""
    throughput = Throughput()
    registry = RegistryView(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(throughput.run(state))
        yield
        task.cancel()

    r = APIRouter(lifespan=lifespan)

    def page(body: bytes, media_type: str) -> Response:
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    @r.get("/dashboard", include_in_schema=False)
    def shell():
        return page(_asset("index.html"), "text/html")

    for name, media_type in ASSETS.items():
        r.add_api_route(f"/dashboard/{name}", lambda n=name, t=media_type: page(_asset(n), t),
                        methods=["GET"], include_in_schema=False)

    def need(request: Request, role: str):
        caller = caller_of(request)
        if caller is None or caller.role != role:
            raise ApiError(403, f"this page is for {role} keys", "permission_error")
        return caller

    @r.get("/dashboard/api/me")
    def me(request: Request):
        """Who the key belongs to, and which parts this gateway has."""
        caller = caller_of(request)
        return {"role": caller.role if caller is not None else "open",
                "name": caller.name if caller is not None else "",
                "account_id": caller.account_id if caller is not None else None,
                "model": state.model_name, "trace_store": state.traces is not None,
                "verification": state.verifier is not None,
                "registry": registry.configured}

    @r.get("/dashboard/api/swarm")
    async def swarm(request: Request):
        caller = caller_of(request)
        return await swarm_view(state, throughput,
                                full=caller is not None and caller.role == "maintainer")

    @r.get("/dashboard/api/contributor")
    async def contributor(request: Request):
        if state.traces is None:  # before the role: without a store no key is a contributor's
            raise ApiError(404, "this gateway has no trace store: nothing is recorded, so "
                           "there are no grants, traces or lineage to show",
                           "invalid_request_error", code="no_trace_store")
        caller = need(request, "contributor")
        feedback = await asyncio.to_thread(state.traces.feedback, caller.account_id)
        datasets = await asyncio.to_thread(state.traces.datasets_of, caller.account_id)
        lineage: dict[str, Any] = {"datasets": datasets, "models": [], "registry": None}
        if not registry.configured:
            lineage["registry"] = "no registry is configured: model versions are not shown"
        elif datasets:
            try:
                lineage["models"] = await asyncio.to_thread(registry.models_using,
                                                            set(datasets))
            except Exception as exc:
                lineage["registry"] = f"registry unreadable: {exc}"
        return {"feedback": [{k: (v.isoformat() if hasattr(v, "isoformat") else v)
                              for k, v in f.items()} for f in feedback], "lineage": lineage}

    @r.get("/dashboard/api/maintainer")
    async def maintainer(request: Request):
        need(request, "maintainer")
        out: dict[str, Any] = {"registry": None, "channels": [], "candidates": []}
        if not registry.configured:
            out["registry"] = "no registry is configured for this gateway"
        else:
            try:
                out["channels"] = await asyncio.to_thread(registry.channels)
                out["candidates"] = await asyncio.to_thread(registry.candidates,
                                                            out["channels"])
            except Exception as exc:
                out["registry"] = f"registry unreadable: {exc}"
        out["flow_runs"] = await registry.flow_runs()
        out["usage"] = await asyncio.to_thread(usage_totals, state)
        out["trace_ingestion"] = state.traces.backlog() if state.traces is not None else None
        return out

    return r
