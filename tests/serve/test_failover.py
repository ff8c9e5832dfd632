"""Killing nodes: streams reroute with unchanged text; a missing span is a 503 naming it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from serve.up import LocalSwarm, SwarmSpec
from tests.serve.conftest import local_greedy, node_stats, tiny_home

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def replicated_swarm(tmp_path_factory, tiny_model_dir):
    """Layers 1:3 are served three times (two kill tests); every hop is delayed 10 ms so a stream takes seconds."""
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    spec = SwarmSpec(model="tiny@production", spans=[(0, 1), (1, 3), (1, 3), (1, 3), (3, 4)],
                     delay_ms=10, timeout_s=5, api_keys=["sk-test"])
    swarm = LocalSwarm(spec, home, num_layers=4).start()
    yield swarm
    swarm.stop()


def stream_text(swarm, body, on_chunk=None) -> tuple[str, str, dict]:
    text, finish, ext = "", "", {}
    with httpx.stream("POST", f"{swarm.base_url}/v1/chat/completions", json=body, headers=AUTH,
                      timeout=120) as r:
        assert r.status_code == 200
        for i, line in enumerate(r.iter_lines()):
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if not chunk["choices"]:  # the usage chunk
                ext = chunk["shoal"]
                continue
            text += chunk["choices"][0]["delta"].get("content") or ""
            finish = chunk["choices"][0]["finish_reason"] or finish
            if on_chunk:
                on_chunk(i)
    return text, finish, ext


def middle_node_in_use(swarm) -> dict | None:
    busy = [n for n in node_stats(swarm) if (n["start"], n["end"]) == (1, 3) and n["sessions"]]
    return busy[0] if busy else None


@pytest.mark.parametrize("drafter", ["off", "prompt_lookup"])
def test_killing_the_middle_node_mid_stream_keeps_the_text(replicated_swarm, reference, drafter):
    _, tok = reference
    messages = [{"role": "user", "content": "the quick brown fox"}]
    expected = tok.decode(local_greedy(reference, messages, 60), skip_special_tokens=True)
    body = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 60,
            "stream": True, "stream_options": {"include_usage": True},
            "speculation": {"drafter": drafter}}
    killed: list[int] = []
    deadline = time.monotonic() + 15  # earlier requests' sessions must be gone from the stats
    while any(n["sessions"] for n in node_stats(replicated_swarm)) and time.monotonic() < deadline:
        time.sleep(0.3)

    def killer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            node = middle_node_in_use(replicated_swarm)
            if node:
                os.killpg(node["pid"], signal.SIGKILL)
                killed.append(node["pid"])
            time.sleep(0.2)

    before = httpx.get(f"{replicated_swarm.base_url}/metrics").json()["failovers"]
    thread = threading.Thread(target=killer)
    thread.start()
    text, _, ext = stream_text(replicated_swarm, body)
    thread.join()
    assert killed, "the stream ended before a middle node could be killed"
    assert text == expected
    assert ext["failovers"] >= 1
    if drafter != "off":
        assert ext["drafted"] > 0 and ext["tokens_per_traversal"] > 1.0, ext
    metrics = httpx.get(f"{replicated_swarm.base_url}/metrics").json()
    assert metrics["failovers"] - before == ext["failovers"]  # one count, one meaning


def test_no_route_is_503_naming_the_span(replicated_swarm):
    for node in node_stats(replicated_swarm):
        if (node["start"], node["end"]) == (1, 3):
            try:
                os.killpg(node["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
            "temperature": 0, "max_tokens": 4}
    r = httpx.post(f"{replicated_swarm.base_url}/v1/chat/completions", json=body, headers=AUTH,
                   timeout=60)
    assert r.status_code == 503, r.text
    assert "layers 1:3" in r.json()["error"]["message"]
