"""Bad input gets a 4xx in OpenAI's error shape, and the gateway keeps serving."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serve.conftest import node_stats

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}


def post(swarm, body, path="/v1/chat/completions", headers=AUTH, raw: bytes | None = None):
    url = f"{swarm.base_url}{path}"
    if raw is not None:
        return httpx.post(url, content=raw, headers={**headers, "content-type":
                                                     "application/json"}, timeout=60)
    return httpx.post(url, json=body, headers=headers, timeout=60)


def ok_body(**kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4, "temperature": 0, **kw}


@pytest.mark.parametrize("case, body, status, param", [
    ("unknown model", ok_body(model="gpt-9"), 404, "model"),
    ("wrong type", ok_body(max_tokens="many"), 400, "max_tokens"),
    ("negative temperature", ok_body(temperature=-0.5), 400, "temperature"),
    ("empty messages", ok_body(messages=[]), 400, "messages"),
    ("invalid role", ok_body(messages=[{"role": "wizard", "content": "hi"}]), 400, None),
    ("tool message without id", ok_body(messages=[{"role": "tool", "content": "1"}]), 400, None),
    ("max_tokens beyond context", ok_body(max_tokens=100_000), 400, "max_tokens"),
    ("n > 1", ok_body(n=2), 400, "n"),
    ("top_p zero", ok_body(top_p=0), 400, "top_p"),
])
def test_bad_request_gets_openai_error(tiny_swarm, case, body, status, param):
    r = post(tiny_swarm, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"].startswith(param), err


def test_malformed_json_and_long_prompt(tiny_swarm):
    r = post(tiny_swarm, None, raw=b'{"model": "tiny", "messages": [')
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    long = ok_body(messages=[{"role": "user", "content": "hello world " * 400}])
    r = post(tiny_swarm, long)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(tiny_swarm, {"model": "tiny", "prompt": "", "max_tokens": 2}, "/v1/completions")
    assert r.status_code == 400


def test_auth_required(tiny_swarm):
    r = post(tiny_swarm, ok_body(), headers={})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = post(tiny_swarm, ok_body(), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_still_serving_after_bad_input(tiny_swarm):
    r = post(tiny_swarm, ok_body())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


def test_dropped_stream_frees_sessions_on_every_node(tiny_swarm):
    cancelled = httpx.get(f"{tiny_swarm.base_url}/metrics").json()["cancelled"]
    body = ok_body(max_tokens=230, stream=True, messages=[{"role": "user",
                                                           "content": "the quick brown fox"}])
    with httpx.stream("POST", f"{tiny_swarm.base_url}/v1/chat/completions", json=body,
                      headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
    # client gone; the gateway must close the session on every node of its route
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(n["sessions"] == 0 for n in node_stats(tiny_swarm)):
            break
        time.sleep(0.5)
    assert all(n["sessions"] == 0 for n in node_stats(tiny_swarm)), node_stats(tiny_swarm)
    assert httpx.get(f"{tiny_swarm.base_url}/metrics").json()["cancelled"] == cancelled + 1
    assert post(tiny_swarm, ok_body()).status_code == 200
