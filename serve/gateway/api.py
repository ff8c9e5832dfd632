"""The OpenAI-compatible HTTP API of the gateway (FastAPI).

`/v1/chat/completions` (streaming or not, tools rendered through the chat template, tool calls
parsed back, `response_format` enforced by constrained decoding), `/v1/completions`, `/v1/models`,
plus `/health`, `/metrics`, `/v1/rollout` and `/verifier`. This is the only place that turns
exceptions into status codes; every error body has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

Requests reach a route through `serve.gateway.guard.Guard` (body bound, then the key, then the
body), so a route finds its caller in `request.state.caller`. Tokenizer and trace-store work runs
in worker threads, never on the event loop. docs/serving.md tables which OpenAI parameters are
honoured and which are refused with a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.exceptions import ApiError, HopFailed, NoRoute
from serve.gateway.chat_format import TextStream, parse_tool_calls, render_chat
from serve.gateway.constrained import json_constraint
from serve.gateway.engine import Engine, Outcome, speculation_rates
from serve.gateway.guard import ApiLimits, Authenticator, Guard, error_body, error_response
from serve.gateway.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from serve.policy import RoutingPolicies
from serve.rollout import VersionSet
from serve.sampling import SamplingParams
from traces.exceptions import AuthError, Forbidden, NotFound, TraceStoreError

@dataclass
class Runtime:
    """One model version at the gateway: its head, pipeline, engine and verifier."""

    version_id: str
    engine: Engine
    verifier: Any = None
    """The node verifier (serve.gateway.verifier.Verifier), when verification is on."""
    inflight: int = 0
    """Requests running on this version now (a retired version is dropped at zero)."""
    tasks: list = field(default_factory=list)
    draft: str | None = None
    """Version id of the draft model paired with this version (rolled out from `<channel>-draft`)."""


@dataclass
class GatewayState:
    versions: VersionSet[Runtime]
    """The runtimes loaded; new requests start on `versions.current`, a running request keeps the
    version it started on."""
    model_name: str
    api_keys: set[str] = field(default_factory=set)
    """Accepted bearer keys; empty means no authentication."""
    traces: Any = None
    """The trace store (traces.store.TraceStore): accounts, consent, capture. None: static keys."""
    rollout: dict = field(default_factory=dict)
    """The channel watch and the last switch (shown by /v1/rollout and `shoal status`)."""
    started: float = field(default_factory=time.time)
    limits: ApiLimits = field(default_factory=ApiLimits)
    """Body size, body time and key-lookup bounds (serve.gateway.guard)."""
    handlers: dict = field(default_factory=dict)
    """Endpoint path -> `async (body, caller, owner) -> response dict`: the request path of
    `/v1/chat/completions` and `/v1/completions`, which batch lines run through too."""
    batches: Any = None
    """The batch scheduler (serve.gateway.scheduler.Scheduler); None: no Batch API."""
    meter: Any = None
    """The usage meter (serve.gateway.usage.Meter); None: usage is not metered."""
    policies: RoutingPolicies = field(default_factory=RoutingPolicies)
    """Which nodes a request may be routed through (serve/policy.py)."""

    def runtime(self) -> Runtime:
        return self.versions.active

    @property
    def current(self) -> str:
        return self.versions.current

    @property
    def engine(self) -> Engine:
        return self.runtime().engine

    @property
    def verifier(self):
        return self.runtime().verifier

    @property
    def version_id(self) -> str:
        return self.current


def is_maintainer(caller: Any) -> bool:
    return caller is not None and caller.role == "maintainer"


def create_app(state: GatewayState, lifespan=None) -> FastAPI:
    app = FastAPI(title="shoal gateway", lifespan=lifespan)
    app.state.auth = Authenticator(state, state.limits)
    app.add_middleware(Guard, auth=app.state.auth)

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(TraceStoreError)
    async def _trace_error(_, exc: TraceStoreError):
        status, type_ = {AuthError: (401, "authentication_error"),
                         Forbidden: (403, "permission_error"),
                         NotFound: (404, "invalid_request_error")}.get(
            type(exc), (400, "invalid_request_error"))
        return JSONResponse(error_body(str(exc), type_), status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        return JSONResponse(error_body(f"{message}" + (f" (at {'.'.join(loc)})" if loc else ""),
                                       "invalid_request_error", ".".join(loc) or None), 400)

    @app.exception_handler(RecursionError)
    async def _too_deep(_, exc: RecursionError):
        return JSONResponse(error_body("request is nested too deeply", "invalid_request_error",
                                       code="nested_too_deeply"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type_), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_, exc: Exception):  # a bug: say so in OpenAI's shape, tell nothing
        return JSONResponse(error_body("internal error", "server_error"), 500)

    def authorize(request: Request):
        """The caller the guard authenticated: an account, a static-key app account, or None
        (an open gateway, or no key on a public path)."""
        return getattr(request.state, "caller", None)

    def check_model(model: str) -> None:
        if model not in (state.model_name, state.version_id, "default"):
            raise ApiError(404, f"model {model!r} does not exist; GET /v1/models lists them",
                           param="model", code="model_not_found")

    def budget(head, prompt_len: int, asked: int | None) -> int:
        room = head.context_length - prompt_len
        if room <= 0:
            raise ApiError(400, f"prompt is {prompt_len} tokens; the context is "
                           f"{head.context_length}", param="messages",
                           code="context_length_exceeded")
        if asked is not None and asked > room:
            raise ApiError(400, f"max_tokens {asked} + prompt {prompt_len} tokens exceeds the "
                           f"context of {head.context_length}", param="max_tokens",
                           code="context_length_exceeded")
        return asked if asked is not None else min(room, 1024)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                            "created": int(state.started), "owned_by": "shoal",
                                            "version": state.version_id}]}

    @app.get("/health")
    async def health():
        try:
            route = await state.engine.pipeline.route()
        except NoRoute as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, 503)
        return {"ok": True, "route": [h.node_id for h in route]}

    @app.get("/metrics")
    async def metrics(request: Request):
        """Aggregate counters for anyone; which nodes are excluded, for maintainer keys only."""
        p = state.engine.pipeline
        public = {"requests": state.engine.requests, "tokens": state.engine.tokens_generated,
                  "cancelled": state.engine.cancelled,
                  "speculation": {name: st.as_dict() for name, st in
                                  state.engine.spec_stats.items()},
                  "traversals": p.traversals, "failovers": p.failovers,
                  "trace_ingestion": state.traces.backlog() if state.traces is not None else None}
        if not is_maintainer(authorize(request)):
            return public
        return {**public, "excluded": sorted(p._excluded_now())}

    @app.get("/v1/rollout")
    async def rollout(request: Request):
        """Which version new requests get and every version still loaded, for anyone; whether
        the channel watch is healthy, for anyone; its errors and history, for maintainer keys."""
        versions = {v: {"inflight": rt.inflight, "retired": v != state.current,
                        "draft": rt.draft} for v, rt in state.versions.items.items()}
        if is_maintainer(authorize(request)):
            return {"current": state.current, **state.rollout, "versions": versions}
        channel = state.rollout.get("channel")
        public: dict[str, Any] = {"current": state.current, "versions": versions}
        if isinstance(channel, dict):
            public["channel"] = {k: channel[k] for k in ("channel", "ok", "sequence", "version")
                                 if k in channel}
        return public

    @app.get("/verifier")
    async def verifier(request: Request):
        """Trust status of every node. The check schedule and the event counts are shown to
        maintainer keys only: a node must not learn when it will be checked."""
        caller = authorize(request)
        if state.verifier is None:
            return {"enabled": False}
        return {"enabled": True, **state.verifier.summary(full=is_maintainer(caller))}

    from serve.gateway.api_traces import router as traces_router

    app.include_router(traces_router(state, authorize))

    from serve.gateway.batch_api import router as batch_router

    app.include_router(batch_router(state, authorize))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        return await serve_chat(body, authorize(request), request.state.owner)

    async def serve_chat(body: ChatCompletionRequest, caller, owner: str | None):
        """A chat completion for `caller`; its usage is metered to `owner` (None: not here)."""
        check_model(body.model)
        refuse_unserved(body)
        runtime = state.runtime()  # the whole request stays on this version, even mid-rollout
        head = runtime.engine.head
        prompt = await asyncio.to_thread(render_chat, head.tokenizer, body)
        params = SamplingParams(
            max_tokens=budget(head, len(prompt), body.max_completion_tokens or body.max_tokens),
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=tuple(body.stop),
            logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
            **shaping(head, body), constraint=await json_constraint(head, body.response_format))
        return await respond(state, runtime, body, prompt, params, chat=True, caller=caller,
                             owner=owner)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await serve_completion(body, authorize(request), request.state.owner)

    async def serve_completion(body: CompletionRequest, caller, owner: str | None):
        check_model(body.model)
        runtime = state.runtime()
        head = runtime.engine.head
        if isinstance(body.prompt, str):
            prompt = (await asyncio.to_thread(head.tokenizer, body.prompt))["input_ids"]
        else:
            prompt = checked_ids(head, body.prompt)
        params = SamplingParams(
            max_tokens=budget(head, len(prompt), body.max_tokens or 16),
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=tuple(body.stop),
            logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
            prompt_logprobs=body.echo and body.logprobs is not None, **shaping(head, body))
        return await respond(state, runtime, body, prompt, params, chat=False, caller=caller,
                             owner=owner)

    state.handlers.update({"/v1/chat/completions": serve_chat,
                           "/v1/completions": serve_completion})
    return app


def refuse_unserved(body: ChatCompletionRequest) -> None:
    """A 400 for chat parameters the gateway cannot honour (never silently ignored)."""
    if isinstance(body.tool_choice, dict) or body.tool_choice == "required":
        raise ApiError(400, "tool_choice 'required' or a named function is not served; use "
                       "'auto' or 'none'", param="tool_choice", code="unsupported_parameter")
    if body.response_format is not None and body.response_format.type != "text" and body.tools \
            and body.tool_choice != "none":
        raise ApiError(400, "response_format JSON and tools in one request are not served",
                       param="response_format", code="unsupported_parameter")


def checked_ids(head, ids: list[int]) -> list[int]:
    """A prompt given as token ids, each checked against the vocabulary (a 400 otherwise)."""
    vocab = int(head.lm_head.shape[0])
    bad = next((t for t in ids if t >= vocab), None)
    if bad is not None:
        raise ApiError(400, f"prompt names token {bad}; the vocabulary has {vocab}",
                       param="prompt")
    return list(ids)


def shaping(head, body: SamplingFields) -> dict[str, Any]:
    """The bias and penalties of a request as `SamplingParams` fields (token ids checked)."""
    biases = body.token_biases()
    vocab = int(head.lm_head.shape[0])
    bad = [t for t, _ in biases if t >= vocab]
    if bad:
        raise ApiError(400, f"logit_bias names token {bad[0]}; the vocabulary has {vocab}",
                       param="logit_bias")
    return {"logit_bias": biases, "presence_penalty": body.presence_penalty,
            "frequency_penalty": body.frequency_penalty}


def _messages_of(body, chat: bool, prompt_text: str | None) -> list[dict[str, Any]]:
    if chat:
        return [m.model_dump(exclude_none=True) for m in body.messages]
    return [{"role": "user", "content": prompt_text}]


async def respond(state: GatewayState, runtime: Runtime, body, prompt: list[int],
                  params: SamplingParams, *, chat: bool, caller=None, owner: str | None = None):
    """Generate on `runtime` (the version the prompt was tokenized for) and answer in OpenAI's
    shape, streaming or not; the usage served is metered to `owner` (None: not metered)."""
    engine = runtime.engine
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    outcome = Outcome()
    text = TextStream(engine.head.tokenizer, params.stop)
    tokenizer = engine.head.tokenizer
    logprob_items: list[dict[str, Any]] = []
    prompt_text = None if chat else (
        body.prompt if isinstance(body.prompt, str) else tokenizer.decode(prompt))

    def logprob_item(step) -> dict[str, Any]:
        return {"token": tokenizer.decode([step.token]), "logprob": step.logprob,
                "top_logprobs": [{"token": tokenizer.decode([i]), "logprob": v}
                                 for i, v in step.top]}

    def record_logprob(step) -> None:
        if params.logprobs:
            logprob_items.append(logprob_item(step))

    def completion_logprobs() -> dict[str, Any]:
        """Legacy completions' logprobs; with echo, the prompt's tokens first (the first has no
        logprob: nothing precedes it) and `text_offset` counted from the prompt's start."""
        items, offset = logprob_items, len(prompt_text)
        if params.prompt_logprobs:
            first = {"token": tokenizer.decode(prompt[:1]), "logprob": None, "top_logprobs": None}
            items = [first, *map(logprob_item, outcome.prompt_steps), *logprob_items]
            offset = 0
        return _completion_logprobs(items, offset)

    def extension() -> dict[str, Any]:
        return {"version": runtime.version_id, "route": outcome.route,
                "traversals": outcome.traversals, "failovers": outcome.failovers,
                "routing_policy": outcome.routing_policy,
                "drafter": outcome.drafter, "drafted": outcome.drafted,
                "accepted": outcome.accepted,
                **speculation_rates(outcome.drafted, outcome.accepted,
                                    outcome.completion_tokens, outcome.traversals)}

    def usage() -> dict[str, int]:
        return {"prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}

    spec = body.speculation
    drafter = "default"
    if spec is not None and spec.drafter is not None:
        if spec.drafter != "off" and spec.drafter not in engine.drafters:
            raise ApiError(400, f"drafter {spec.drafter!r} is not loaded on this gateway "
                           f"(available: {', '.join(sorted(engine.drafters)) or 'none'}, off)",
                           param="speculation.drafter")
        drafter = spec.drafter
    from serve.gateway.drafting import scope_for  # whose request: the drafter's partition

    scope = await asyncio.to_thread(scope_for, state.traces, caller, body)
    admits = state.policies.filter_for(getattr(caller, "account_id", None),
                                       body.routing.policy if body.routing else None)
    gen = engine.generate(prompt, params, outcome, drafter=drafter,
                          k=spec.k if spec is not None else None, scope=scope, admits=admits)

    def record(calls: list) -> str | None:
        """Durably log the trace (when consent allows) before the response completes."""
        from serve.gateway.chat_format import offered_tools
        from traces.capture import capture

        proof = "verified" if runtime.verifier is not None else "unverified"
        tools = offered_tools(getattr(body, "tools", None), getattr(body, "tool_choice", None))
        return capture(state.traces, caller, body, messages=_messages_of(body, chat, prompt_text),
                       completion=text.text, tool_calls=calls, tools=tools,
                       sampling={"temperature": params.temperature, "top_p": params.top_p,
                                 "max_tokens": params.max_tokens, "seed": params.seed},
                       outcome=outcome, version=runtime.version_id, proof_status=proof)

    async def meter() -> None:
        if owner is not None and state.meter is not None:
            await asyncio.to_thread(state.meter.served, owner, usage())

    if not body.stream:
        try:
            runtime.inflight += 1
            async with contextlib.aclosing(gen):
                async for step in gen:
                    record_logprob(step)
                    text.push(step.token)
                    if text.stopped:
                        outcome.finish_reason = "stop"
        except NoRoute as exc:
            raise ApiError(503, str(exc), "service_unavailable", code="no_route") from None
        except HopFailed as exc:
            raise ApiError(502, f"the swarm failed to answer: {exc}", "service_unavailable",
                           code="swarm_failure") from None
        finally:
            runtime.inflight -= 1
        text.flush()
        content = text.text
        calls = parse_tool_calls(content) if getattr(body, "tools", None) else []
        trace_id = await asyncio.to_thread(record, calls)
        await meter()
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            finish = outcome.finish_reason
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": calls}
                finish = "tool_calls"
            choice = {"index": 0, "message": message, "finish_reason": finish,
                      "logprobs": {"content": logprob_items} if params.logprobs else None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": prompt_text + content if body.echo else content,
                      "finish_reason": outcome.finish_reason,
                      "logprobs": completion_logprobs() if params.logprobs else None}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": state.model_name,
                "choices": [choice], "usage": usage(),
                "shoal": {**extension(), "request_id": trace_id, "trace_id": trace_id}}

    # streaming: check the route before sending headers, so "no route" is still a 503
    try:
        await engine.pipeline.route(admits)
    except NoRoute as exc:
        raise ApiError(503, str(exc), "service_unavailable", code="no_route") from None
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(delta_or_text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": delta_or_text} if delta_or_text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta_or_text or "", "finish_reason": finish,
                      "logprobs": None}
            obj = "text_completion"
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                      "model": state.model_name, "choices": [choice]}) + "\n\n"

    async def events():
        runtime.inflight += 1
        try:
            if chat:
                yield chunk(None, None, first=True)
            elif body.echo:
                yield chunk(prompt_text, None)
            async with contextlib.aclosing(gen):
                async for step in gen:
                    delta = text.push(step.token)
                    if text.stopped:
                        outcome.finish_reason = "stop"
                    if delta:
                        yield chunk(delta, None)
            tail = text.flush()
            if tail:
                yield chunk(tail, None)
            trace_id = await asyncio.to_thread(
                record, parse_tool_calls(text.text) if getattr(body, "tools", None) else [])
            await meter()
            yield chunk(None, outcome.finish_reason)
            if include_usage or trace_id:
                yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk",
                                             "created": created, "model": state.model_name,
                                             "choices": [], "usage": usage(),
                                             "shoal": {**extension(),
                                                       "request_id": trace_id,
                                                       "trace_id": trace_id}}) + "\n\n"
        except (NoRoute, HopFailed) as exc:
            yield "data: " + json.dumps(error_body(str(exc), "service_unavailable")) + "\n\n"
        finally:
            runtime.inflight -= 1
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _completion_logprobs(items: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The legacy shape: parallel lists, `top_logprobs` as {token: logprob} (None where the
    token has no logprob), `text_offset` the character where each token starts."""
    offsets = []
    for i in items:
        offsets.append(offset)
        offset += len(i["token"])
    return {"tokens": [i["token"] for i in items],
            "token_logprobs": [i["logprob"] for i in items],
            "top_logprobs": [None if i["top_logprobs"] is None else
                             {t["token"]: t["logprob"] for t in i["top_logprobs"]}
                             for i in items],
            "text_offset": offsets}
