"""Cheating nodes are caught, evicted, and never answer for the app.

One swarm holds an honest route plus one cheater per attack, each a replica of layers 1:3 of the
tiny model. The gateway's verifier challenges every node before routing through it and then at
random intervals; each test checks that its cheater was evicted by the check that catches it.
"""

from __future__ import annotations

import time

import httpx
import pytest

from serve.up import LocalSwarm, SwarmSpec
from tests.serve.conftest import local_greedy, node_stats, tiny_home

pytestmark = pytest.mark.slow
ATTACKS = {  # mode -> checks that may catch it
    "bf16": {"merkle"},
    "int8": {"merkle"},
    "swap-layer": {"merkle"},
    "one-weight": {"merkle", "fingerprint"},  # whichever samples it first
    "other-model": {"fingerprint"},
    "file-proof": {"fingerprint"},
    "replay": {"replay"},
    "other-node": {"node-identity", "node-signature"},
    "slow": {"deadline"},
    "bad-index": {"selection", "malformed"},  # once an uncaught error: fail-open
    "bad-shape": {"malformed"},
}
AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def cheater_swarm(tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    modes = ["honest"] * 3 + list(ATTACKS)
    spans = [(0, 1), (1, 3), (3, 4)] + [(1, 3)] * len(ATTACKS)
    spec = SwarmSpec(model="tiny@production", spans=spans, api_keys=["sk-test"],
                     node_module="tests.serve.cheaters",
                     node_args=[["--cheat", m] for m in modes],
                     verify_interval_s=1.0, verify_new_interval_s=0.3)
    swarm = LocalSwarm(spec, home, num_layers=4).start(wait_s=300)
    pids = {}
    deadline = time.monotonic() + 60
    while len(pids) < len(modes) and time.monotonic() < deadline:
        by_pid = {n["pid"]: n["node_id"] for n in node_stats(swarm)}
        pids = {mode: by_pid[swarm.procs[f"node{i}"].pid] for i, mode in enumerate(modes)
                if swarm.procs[f"node{i}"].pid in by_pid and mode != "honest"}
        time.sleep(0.5)
    swarm.cheaters = pids
    yield swarm
    swarm.stop()


def verifier_state(swarm) -> dict:
    return httpx.get(f"{swarm.base_url}/verifier", headers=AUTH, timeout=10).json()


def wait_evicted(swarm, node_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trust = verifier_state(swarm)["nodes"].get(node_id, {})
        if trust.get("status") == "evicted":
            return trust
        time.sleep(0.5)
    raise AssertionError(f"node {node_id} not evicted: {verifier_state(swarm)['nodes'].get(node_id)}")


@pytest.mark.parametrize("mode", list(ATTACKS))
def test_cheater_is_detected_and_evicted(cheater_swarm, mode):
    node_id = cheater_swarm.cheaters[mode]
    trust = wait_evicted(cheater_swarm, node_id)
    check = trust["reason"].split("[", 1)[1].split("]", 1)[0]
    assert check in ATTACKS[mode], trust["reason"]
    # every gateway learns it from the tracker
    tracker = {n["node_id"]: n["status"] for n in node_stats(cheater_swarm)}
    assert tracker[node_id] == "evicted"


def test_no_answer_goes_through_a_cheater(cheater_swarm, reference):
    _, tok = reference
    cheaters = set(cheater_swarm.cheaters.values())
    for prompt in ["hello world", "the quick brown fox", "a swarm of machines"]:
        messages = [{"role": "user", "content": prompt}]
        r = httpx.post(f"{cheater_swarm.base_url}/v1/chat/completions", headers=AUTH,
                       json={"model": "tiny", "messages": messages, "temperature": 0,
                             "max_tokens": 16}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert not cheaters & set(body["shoal"]["route"]), body["shoal"]["route"]
        assert body["choices"][0]["message"]["content"] == tok.decode(
            local_greedy(reference, messages, 16), skip_special_tokens=True)


def test_honest_nodes_are_never_evicted_here(cheater_swarm):
    state = verifier_state(cheater_swarm)["nodes"]
    cheaters = set(cheater_swarm.cheaters.values())
    honest = {k: v for k, v in state.items() if k not in cheaters}
    assert len(honest) == 3 and all(v["status"] == "trusted" for v in honest.values()), honest


def test_standalone_verify_command(cheater_swarm, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("SHOAL_HOME", str(cheater_swarm.home))
    urls = {n["node_id"]: n["url"] for n in node_stats(cheater_swarm)}
    honest = next(k for k in urls if k not in set(cheater_swarm.cheaters.values()))
    ok = CliRunner().invoke(app, ["verify", "--node", urls[honest], "--model", "tiny@production"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("PASS") == 4 and "fingerprint" in ok.output
    bad = CliRunner().invoke(app, ["verify", "--node", urls[cheater_swarm.cheaters["bf16"]],
                                   "--model", "tiny@production", "--no-fingerprint"])
    assert bad.exit_code == 1 and "FAIL proof" in bad.output and "merkle" in bad.output
    shown = CliRunner().invoke(app, ["status", "--tracker", cheater_swarm.tracker_url],
                               env={"COLUMNS": "300"})  # a wide table: no cell is cut
    assert shown.exit_code == 0 and "evicted" in shown.output and "production" in shown.output
