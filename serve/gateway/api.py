"""The OpenAI-compatible HTTP API of the gateway (FastAPI).

`/v1/chat/completions` (streaming or not, tools rendered through the chat template, tool calls
parsed back), `/v1/completions`, `/v1/models`, plus `/health` and `/metrics`. This is the only
place that turns exceptions into status codes; every error body has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from serve.exceptions import ApiError, HopFailed, NoRoute
from serve.gateway.engine import Engine, Outcome, speculation_rates
from serve.sampling import SamplingParams
from serve.gateway.schemas import ChatCompletionRequest, CompletionRequest
from serve.rollout import VersionSet
from traces.exceptions import AuthError, Forbidden, NotFound, TraceStoreError

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
TOOLS_PROMPT = (
    "You can call these functions. To call one, answer only with\n"
    "<tool_call>{{\"name\": <function name>, \"arguments\": <JSON object>}}</tool_call>\n"
    "Functions:\n{tools}")


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


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def create_app(state: GatewayState, lifespan=None) -> FastAPI:
    app = FastAPI(title="shoal gateway", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status)

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
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        return JSONResponse(error_body(f"{message}" + (f" (at {'.'.join(loc)})" if loc else ""),
                                       "invalid_request_error", ".".join(loc) or None), 400)

    def authorize(request: Request):
        """The caller's account (trace store), a static-key app account, or None (open)."""
        from traces.schemas import Account

        auth = request.headers.get("authorization", "")
        secret = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if state.traces is not None:
            if not secret:
                raise ApiError(401, "missing API key", "authentication_error",
                               code="invalid_api_key")
            try:
                return state.traces.authenticate(secret)
            except AuthError as exc:
                raise ApiError(401, str(exc), "authentication_error",
                               code="invalid_api_key") from None
        if not state.api_keys:
            return None
        if secret not in state.api_keys:
            raise ApiError(401, "invalid or missing API key", "authentication_error",
                           code="invalid_api_key")
        return Account(account_id="static", role="app", name="static key",
                       created_at=datetime.fromtimestamp(state.started, UTC))

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
    async def metrics():
        p = state.engine.pipeline
        return {"requests": state.engine.requests, "tokens": state.engine.tokens_generated,
                "cancelled": state.engine.cancelled,
                "speculation": {name: st.as_dict() for name, st in
                                state.engine.spec_stats.items()},
                "traversals": p.traversals, "failovers": p.failovers,
                "excluded": sorted(p._excluded_now())}

    @app.get("/v1/rollout")
    async def rollout():
        """Which version new requests get, every version still loaded, and the channel watch."""
        return {"current": state.current, **state.rollout,
                "versions": {v: {"inflight": rt.inflight, "retired": v != state.current,
                                 "draft": rt.draft} for v, rt in state.versions.items.items()}}

    @app.get("/verifier")
    async def verifier(request: Request):
        """Trust status of every node. The check schedule and the event counts are shown to
        maintainer keys only: a node must not learn when it will be checked."""
        caller = authorize(request)
        if state.verifier is None:
            return {"enabled": False}
        full = caller is not None and caller.role == "maintainer"
        return {"enabled": True, **state.verifier.summary(full=full)}

    from serve.gateway.api_traces import router as traces_router

    app.include_router(traces_router(state, authorize))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        caller = authorize(request)
        check_model(body.model)
        runtime = state.runtime()  # the whole request stays on this version, even mid-rollout
        head = runtime.engine.head
        prompt = render_chat(head.tokenizer, body)
        params = SamplingParams(
            max_tokens=budget(head, len(prompt), body.max_completion_tokens or body.max_tokens),
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=tuple(body.stop),
            logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0)
        return await respond(state, runtime, body, prompt, params, chat=True, caller=caller)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        caller = authorize(request)
        check_model(body.model)
        runtime = state.runtime()
        head = runtime.engine.head
        prompt = head.tokenizer(body.prompt)["input_ids"]
        params = SamplingParams(
            max_tokens=budget(head, len(prompt), body.max_tokens or 16),
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=tuple(body.stop),
            logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0)
        return await respond(state, runtime, body, prompt, params, chat=False, caller=caller)

    return app


def render_chat(tokenizer, body: ChatCompletionRequest) -> list[int]:
    """Messages (tool calls and tool results included) through the model's chat template."""
    messages: list[dict[str, Any]] = []
    for m in body.messages:
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                               "content": m.text()}
        if m.tool_calls:
            msg["tool_calls"] = [{"type": "function", "id": c.id, "function": {
                "name": c.function.name, "arguments": _json_or_text(c.function.arguments)}}
                for c in m.tool_calls]
            if not msg["content"]:
                msg["content"] = "".join(
                    f"<tool_call>{json.dumps({'name': c.function.name, 'arguments': _json_or_text(c.function.arguments)})}</tool_call>"
                    for c in m.tool_calls)
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    tools = body.tools if body.tool_choice != "none" else None
    template = tokenizer.chat_template or ""
    if tools and "tools" not in template:  # the template cannot render tools: describe them
        described = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + described}
        else:
            messages.insert(0, {"role": "system", "content": described})
        tools = None
    try:
        encoded = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                tokenize=True, return_dict=True)
    except Exception as exc:  # a template that rejects this conversation
        raise ApiError(400, f"chat template rejected the messages: {exc}",
                       param="messages") from None
    return list(encoded["input_ids"])


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    calls = []
    for raw in TOOL_CALL_RE.findall(text):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
                "name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}})
    return calls


class TextStream:
    """Incremental detokenization with stop strings: emits only text that is final."""

    def __init__(self, tokenizer, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stops:
            at = self.text.find(s)
            if at != -1:
                self.text, self.stopped = self.text[:at], True
        if self.stopped:
            return self.flush()
        hold = max((len(s) - 1 for s in self.stops), default=0)
        safe = len(self.text) - hold
        if self.text.endswith("\ufffd"):  # an incomplete UTF-8 sequence
            safe = min(safe, len(self.text) - 1)
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:safe], safe
        return delta

    def flush(self) -> str:
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


def _messages_of(body, chat: bool) -> list[dict[str, Any]]:
    if chat:
        return [m.model_dump(exclude_none=True) for m in body.messages]
    return [{"role": "user", "content": body.prompt}]


async def respond(state: GatewayState, runtime: Runtime, body, prompt: list[int],
                  params: SamplingParams, *, chat: bool, caller=None):
    """Generate on `runtime` (the version the prompt was tokenized for) and answer in OpenAI's
    shape, streaming or not."""
    engine = runtime.engine
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    outcome = Outcome()
    text = TextStream(engine.head.tokenizer, params.stop)
    tokenizer = engine.head.tokenizer
    logprob_items: list[dict[str, Any]] = []

    def record_logprob(step) -> None:
        if params.logprobs:
            tok = tokenizer.decode([step.token])
            logprob_items.append({"token": tok, "logprob": step.logprob, "top_logprobs": [
                {"token": tokenizer.decode([i]), "logprob": v} for i, v in step.top]})

    def extension() -> dict[str, Any]:
        return {"version": runtime.version_id, "route": outcome.route,
                "traversals": outcome.traversals, "failovers": outcome.failovers,
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
    gen = engine.generate(prompt, params, outcome, drafter=drafter,
                          k=spec.k if spec is not None else None)

    def record(calls: list) -> str | None:
        """Durably log the trace (when consent allows) before the response completes."""
        from traces.capture import capture

        proof = "verified" if runtime.verifier is not None else "unverified"
        return capture(state.traces, caller, body, messages=_messages_of(body, chat),
                       completion=text.text, tool_calls=calls,
                       sampling={"temperature": params.temperature, "top_p": params.top_p,
                                 "max_tokens": params.max_tokens, "seed": params.seed},
                       outcome=outcome, version=runtime.version_id, proof_status=proof)
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
        trace_id = record(calls)
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
            choice = {"index": 0, "text": content, "finish_reason": outcome.finish_reason,
                      "logprobs": _completion_logprobs(logprob_items) if params.logprobs
                      else None}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": state.model_name,
                "choices": [choice], "usage": usage(),
                "shoal": {**extension(), "trace_id": trace_id}}

    # streaming: check the route before sending headers, so "no route" is still a 503
    try:
        await engine.pipeline.route()
    except NoRoute as exc:
        raise ApiError(503, str(exc), "service_unavailable", code="no_route") from None
    include_usage = bool((body.stream_options or {}).get("include_usage"))

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
            trace_id = record(parse_tool_calls(text.text) if getattr(body, "tools", None)
                              else [])
            yield chunk(None, outcome.finish_reason)
            if include_usage or trace_id:
                yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk",
                                             "created": created, "model": state.model_name,
                                             "choices": [], "usage": usage(),
                                             "shoal": {**extension(),
                                                       "trace_id": trace_id}}) + "\n\n"
        except (NoRoute, HopFailed) as exc:
            yield "data: " + json.dumps(error_body(str(exc), "service_unavailable")) + "\n\n"
        finally:
            runtime.inflight -= 1
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _completion_logprobs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tokens": [i["token"] for i in items],
            "token_logprobs": [i["logprob"] for i in items],
            "top_logprobs": [{t["token"]: t["logprob"] for t in i["top_logprobs"]}
                             for i in items]}
