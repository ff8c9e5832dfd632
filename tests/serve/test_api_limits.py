"""Hostile input at the gateway's HTTP layer: every malformed request gets a typed 4xx in OpenAI's
shape, bodies are bounded and read only after the key is checked, failed keys are cheap, and
operational endpoints show their detail to maintainer keys only.

In process (FastAPI's TestClient over the real app, the real tiny model's head and a real
LanceDB trace store); the swarm behind it is empty, so a request that passes every check ends in
a 503 "no route", which is how these tests tell "accepted" from "refused".
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from serve.discovery import StaticDiscovery
from serve.gateway.api import GatewayState, Runtime, create_app
from serve.gateway.engine import Engine
from serve.gateway.guard import ApiLimits
from serve.gateway.head import Head
from serve.gateway.pipeline import Pipeline
from serve.rollout import VersionSet

VERSION = "sha256:" + "1" * 64
KEY = {"Authorization": "Bearer sk-test"}
ACCEPTED = 503  # passed validation; the empty swarm has no route


def make_state(model_dir, **kw) -> GatewayState:
    head = Head(model_dir)
    runtime = Runtime(VERSION, Engine(head, Pipeline(StaticDiscovery([]), head.num_layers,
                                                     VERSION)))
    return GatewayState(VersionSet(VERSION, runtime), "tiny", **kw)


@pytest.fixture(scope="module")
def state(tiny_model_dir) -> GatewayState:
    return make_state(tiny_model_dir, api_keys={"sk-test"},
                      limits=ApiLimits(max_body_bytes=256 * 1024, body_timeout_s=0.5))


@pytest.fixture(scope="module")
def client(state) -> TestClient:
    return TestClient(create_app(state), raise_server_exceptions=False)


def chat(**kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4, "temperature": 0, **kw}


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    if param:
        assert (err["param"] or "").startswith(param), err
    return err


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("case, body, param", [
    ("text part whose text is a number", chat(messages=user([{"type": "text", "text": 5}])),
     "messages.0.content"),
    ("image part", chat(messages=user([{"type": "image_url", "image_url": {"url": "x"}}])),
     "messages.0.content"),
    ("deeply nested tool-call arguments", chat(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": DEEP}}]}]),
     "messages.0.tool_calls.0.function.arguments"),
    ("deeply nested tools", chat(tools=[{"type": "function", "x": json.loads(
        "[" * 40 + "]" * 40)}]), "tools"),
    ("seed above int64", chat(seed=2**64), "seed"),
    ("seed below int64", chat(seed=-2**63 - 1), "seed"),
    ("huge max_tokens", chat(max_tokens=10**30), "max_tokens"),
    ("penalty out of range", chat(presence_penalty=3), "presence_penalty"),
    ("logit_bias key not a token id", chat(logit_bias={"hello": 1}), "logit_bias"),
    ("logit_bias beyond the vocabulary", chat(logit_bias={"99999": 1}), "logit_bias"),
    ("logit_bias out of range", chat(logit_bias={"5": 101}), "logit_bias"),
    ("n > 1", chat(n=2), "n"),
    ("five stop strings", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("unknown response_format", chat(response_format={"type": "yaml"}), "response_format"),
    ("json_schema without a schema", chat(response_format={"type": "json_schema"}),
     "response_format"),
    ("schema llguidance cannot enforce", chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}),
     "response_format"),
    ("tool_choice required", chat(tool_choice="required", tools=[
        {"type": "function", "function": {"name": "f", "parameters": {}}}]), "tool_choice"),
    ("stream_options of the wrong type", chat(stream=True, stream_options={
        "include_usage": "lots"}), "stream_options"),
    ("too many messages", chat(messages=user("x") * 5000), "messages"),
])
def test_malformed_chat_is_a_typed_400(client, case, body, param):
    assert_openai_error(client.post("/v1/chat/completions", json=body, headers=KEY), 400, param)


@pytest.mark.parametrize("case, body, param", [
    ("a token id beyond the vocabulary", {"prompt": [5, 10**9]}, "prompt"),
    ("a negative token id", {"prompt": [[5, -1]]}, "prompt"),
    ("two token-id prompts", {"prompt": [[5], [6]]}, "prompt"),
    ("suffix", {"prompt": "hi", "suffix": "bye"}, "suffix"),
    ("two prompts", {"prompt": ["a", "b"]}, "prompt"),
    ("seed overflow", {"prompt": "hi", "seed": 2**70}, "seed"),
])
def test_malformed_completion_is_a_typed_400(client, case, body, param):
    r = client.post("/v1/completions", json={"model": "tiny", **body}, headers=KEY)
    assert_openai_error(r, 400, param)


def test_valid_edge_values_are_accepted(client):
    """The bounds are the API's, not narrower: int64 seeds both ends, biases, penalties,
    JSON formats, text parts."""
    for body in (chat(seed=2**63 - 1), chat(seed=-2**63, temperature=0.7),
                 chat(logit_bias={"5": -100, "6": 100}, presence_penalty=-2,
                      frequency_penalty=2),
                 chat(response_format={"type": "json_object"}),
                 chat(messages=user([{"type": "text", "text": "hi"}])),
                 chat(stop=["a", "b", "c", "d"])):
        r = client.post("/v1/chat/completions", json=body, headers=KEY)
        assert r.status_code == ACCEPTED, (body, r.text)


def test_body_nested_beyond_the_parser_is_a_400(client):
    raw = b'{"model": "tiny", "messages": ' + b"[" * 60000 + b"]" * 60000 + b"}"
    r = client.post("/v1/chat/completions", content=raw[:60 * 1024],
                    headers={**KEY, "content-type": "application/json"})
    assert_openai_error(r, 400)


def test_oversized_body_is_413_before_it_is_read(client):
    big = json.dumps(chat(messages=user("x" * 300 * 1024))).encode()
    r = client.post("/v1/chat/completions", content=big,
                    headers={**KEY, "content-type": "application/json"})
    assert_openai_error(r, 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted while read
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]
    r = client.post("/v1/chat/completions", content=chunks(),
                    headers={**KEY, "content-type": "application/json"})
    assert_openai_error(r, 413)


def test_key_is_checked_before_the_body_is_parsed(client):
    r = client.post("/v1/chat/completions", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert_openai_error(r, 401)["type"] == "authentication_error"
    r = client.post("/v1/chat/completions", content=b"{not json",
                    headers={"Authorization": "Bearer wrong",
                             "content-type": "application/json"})
    assert_openai_error(r, 401)
    r = client.post("/v1/chat/completions", content=b"{not json",
                    headers={**KEY, "content-type": "application/json"})
    assert_openai_error(r, 400)


def test_a_trickled_body_times_out(state):
    async def run() -> httpx.Response:
        async def slow():
            yield b'{"model": "tiny", '
            await asyncio.sleep(1.5)
            yield b'"messages": []}'
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            return await c.post("/v1/chat/completions", content=slow(),
                                headers={**KEY, "content-type": "application/json"})
    assert_openai_error(asyncio.run(run()), 408)


def test_unknown_routes_and_methods_keep_the_shape(client):
    assert_openai_error(client.get("/v1/nothing", headers=KEY), 404)
    assert_openai_error(client.delete("/v1/models", headers=KEY), 405)


@pytest.fixture
def store_state(tiny_model_dir, tmp_path):
    from traces.store import TraceStore, TraceStoreConfig

    store = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                        embed=False))
    keys = {}
    for role in ("app", "contributor", "maintainer"):
        account = store.create_account(role, role)
        keys[role] = {"Authorization": f"Bearer {store.create_key(account.account_id)[1]}"}
    state = make_state(tiny_model_dir)
    state.traces = store
    return state, keys


def test_failed_keys_are_remembered_not_looked_up_again(store_state):
    state, keys = store_state
    app = create_app(state)
    client = TestClient(app, raise_server_exceptions=False)
    auth = app.state.auth
    bad = {"Authorization": "Bearer sk-shoal-000000000000-" + "x" * 32}
    for _ in range(5):
        assert_openai_error(client.get("/v1/models", headers=bad), 401)
    assert auth.lookups == 1
    assert_openai_error(client.get("/v1/models", headers={
        "Authorization": "Bearer " + "k" * 300}), 401)
    assert auth.lookups == 1  # an over-long key is refused without a lookup
    assert client.get("/v1/models", headers=keys["app"]).status_code == 200


def test_an_address_spraying_keys_is_held_back_with_a_429(store_state):
    state, keys = store_state
    state.limits = ApiLimits(failed_auth_per_client=5, failed_auth_window_s=60)
    app = create_app(state)
    sprayer = TestClient(app, raise_server_exceptions=False, client=("203.0.113.9", 4000))
    for i in range(5):
        guess = {"Authorization": f"Bearer sk-shoal-{i:012d}-" + "x" * 32}
        assert_openai_error(sprayer.get("/v1/models", headers=guess), 401)
    lookups = app.state.auth.lookups
    held = sprayer.get("/v1/models", headers={"Authorization": "Bearer sk-shoal-guess-6"})
    assert_openai_error(held, 429)
    assert held.json()["error"]["code"] == "rate_limit_exceeded"
    assert 0 < int(held.headers["retry-after"]) <= 60
    # even a valid key waits out the window from that address, at no lookup cost
    assert sprayer.get("/v1/models", headers=keys["app"]).status_code == 429
    assert app.state.auth.lookups == lookups
    # another address is not held back by the sprayer
    other = TestClient(app, raise_server_exceptions=False, client=("198.51.100.7", 4000))
    assert other.get("/v1/models", headers=keys["app"]).status_code == 200


def test_operational_detail_is_for_maintainers(store_state):
    state, keys = store_state
    client = TestClient(create_app(state), raise_server_exceptions=False)
    state.rollout = {"channel": {"channel": "production", "ok": False, "sequence": 3,
                                 "error": "/secret/path/registry: unreachable"},
                     "switches": [{"from": "a", "to": "b", "at": 0}]}
    public = client.get("/metrics").json()
    assert "excluded" not in public and public["requests"] >= 0
    assert "excluded" in client.get("/metrics", headers=keys["maintainer"]).json()
    assert "excluded" not in client.get("/metrics", headers=keys["app"]).json()
    rollout = client.get("/v1/rollout").json()
    assert rollout["current"] == VERSION and rollout["channel"]["ok"] is False
    assert "error" not in rollout["channel"] and "switches" not in rollout
    full = client.get("/v1/rollout", headers=keys["maintainer"]).json()
    assert full["channel"]["error"] and full["switches"]
    assert_openai_error(client.get("/metrics", headers={"Authorization": "Bearer nope"}), 401)
    assert_openai_error(client.get("/verifier"), 401)


def test_trace_queries_need_zoned_times_and_bounded_limits(store_state):
    state, keys = store_state
    client = TestClient(create_app(state), raise_server_exceptions=False)
    who = keys["maintainer"]
    for params, param in [({"since": "2026-01-01T00:00:00"}, "since"),
                          ({"until": "2026-01-01T00:00:00"}, "until"),
                          ({"limit": 10**9}, "limit"), ({"limit": 0}, "limit"),
                          ({"min_rating": 99}, "min_rating")]:
        assert_openai_error(client.get("/v1/traces", params=params, headers=who), 400, param)
    r = client.get("/v1/traces", params={"since": "2026-01-01T00:00:00Z", "limit": 1000},
                   headers=who)
    assert r.status_code == 200 and r.json()["data"] == [], r.text
    for far in ({"until": "0585-03-01T00:00:00Z"}, {"since": "0001-01-01T00:00:00+05:00",
                                                    "until": "9999-12-31T23:59:59Z"}):
        r = client.get("/v1/traces", params=far, headers=who)  # beyond nanosecond timestamps
        assert r.status_code == 200 and r.json()["data"] == [], r.text


def test_an_open_gateway_takes_any_key(tiny_model_dir):
    client = TestClient(create_app(make_state(tiny_model_dir)), raise_server_exceptions=False)
    for headers in ({}, {"Authorization": "Bearer none"}, {"Authorization": "Basic x"}):
        assert client.get("/v1/models", headers=headers).status_code == 200
