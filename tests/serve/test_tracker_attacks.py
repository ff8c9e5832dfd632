"""Attacks on the tracker of a real local swarm, by an outsider process speaking plain HTTP
(`tests/serve/tracker_attacker.py`): nobody takes over a node's id, nobody without the gateway's
key takes a node out of service, and a flood of fresh keys is bounded. After each attack the
gateway still answers with the reference model's greedy text.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from serve.up import LocalSwarm, SwarmSpec
from tests.serve.conftest import local_greedy, node_stats, tiny_home

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}
MAX_NODES = 24


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    spec = SwarmSpec(model="tiny@production", nodes=3, api_keys=["sk-test"],
                     tracker_max_nodes=MAX_NODES)
    swarm = LocalSwarm(spec, home, num_layers=4).start()
    yield swarm
    swarm.stop()


def attack(swarm: LocalSwarm, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.serve.tracker_attacker", args[0],
                           swarm.tracker_url, *args[1:]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def identities(swarm: LocalSwarm) -> dict[str, tuple[str, str]]:
    return {n["node_id"]: (n["public_key"], n["url"]) for n in node_stats(swarm)}


def assert_serves_correctly(swarm: LocalSwarm, reference) -> None:
    _, tok = reference
    messages = [{"role": "user", "content": "the quick brown fox"}]
    r = httpx.post(f"{swarm.base_url}/v1/chat/completions", headers=AUTH,
                   json={"model": "tiny", "messages": messages, "temperature": 0,
                         "max_tokens": 12}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == tok.decode(
        local_greedy(reference, messages, 12), skip_special_tokens=True)


def test_nobody_takes_over_a_node_id(swarm, reference):
    assert_serves_correctly(swarm, reference)
    before = identities(swarm)
    assert len(before) == 3
    answers = attack(swarm, "takeover")
    assert set(answers) == set(before)
    for node_id, tries in answers.items():
        assert tries["own-key"] == {"status": 403, "check": "node-id"}, tries
        assert tries["its-key"] == {"status": 401, "check": "signature"}, tries
        assert tries["replay"] == {"status": 409, "check": "replay"}, tries
        assert tries["other-url"] == {"status": 401, "check": "signature"}, tries
        assert tries["other-time"] == {"status": 401, "check": "signature"}, tries
    assert identities(swarm) == before  # same key, same address for every id
    assert_serves_correctly(swarm, reference)


def test_one_request_per_node_cannot_take_the_swarm_down(swarm, reference):
    answers = attack(swarm, "verdicts", swarm.gateway_key.public_hex)
    assert len(answers) == 3
    for tries in answers.values():
        assert tries["unsigned"]["status"] == 401, tries
        assert tries["attacker-signed"] == {"status": 403, "check": "authority"}, tries
        assert tries["forged-gateway"] == {"status": 401, "check": "signature"}, tries
    nodes = node_stats(swarm)
    assert [n["status"] for n in nodes] == ["ok"] * 3 and all(n["verdict"] is None
                                                              for n in nodes)
    assert_serves_correctly(swarm, reference)
    # the swarm's own gateway key is the one that can post verdicts (here about nobody real)
    from serve.records import sign_verdict

    ghost = "0" * 32
    r = httpx.post(f"{swarm.tracker_url}/nodes/{ghost}/status",
                   json=sign_verdict(swarm.gateway_key, ghost, "evicted", "test"), timeout=10)
    assert r.status_code == 200, r.text


def test_a_flood_of_fresh_keys_is_bounded(swarm, reference):
    real = set(identities(swarm))
    counts = attack(swarm, "flood", str(MAX_NODES * 4))
    assert counts.get("429:full", 0) >= MAX_NODES * 3, counts
    assert set(counts) <= {"200", "429:full"}, counts
    listed = identities(swarm)
    assert len(listed) <= MAX_NODES and real <= set(listed)
    assert httpx.get(f"{swarm.tracker_url}/health", timeout=10).json()["nodes"] <= MAX_NODES
    assert_serves_correctly(swarm, reference)
