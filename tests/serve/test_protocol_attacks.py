"""Attacks on the hop protocol, by a separate attacker process and by cheating nodes that know the
checks (the swarm protocol, docs/threat-model.md).

- anyone who reaches a node's port: hostile frames get typed errors, nothing crashes, the node
  dials nobody it is not told to by a listed gateway, and the swarm keeps serving the right text;
- a first hop that answers for the whole chain signs its own eviction;
- rational cheaters (true bytes for proofs, an int8 copy's answers on real traffic, honest on
  anything that could be a check, or only on 10% of forwards, or only after admission) pass proofs
  and canaries and are caught by spot checks on real sessions; no answer computed through one
  after the evidence is returned.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serve.up import LocalSwarm, SwarmSpec
from tests.serve.cheaters import RATIONAL
from tests.serve.conftest import local_greedy, node_stats, tiny_home

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}
PROMPTS = ["hello world", "the quick brown fox", "a swarm of machines", "paris is the capital",
           "def add(a, b)", "what is the capital of france?"]


def chat(swarm, prompt: str, max_tokens: int = 12) -> dict:
    r = httpx.post(f"{swarm.base_url}/v1/chat/completions", headers=AUTH, timeout=120,
                   json={"model": "tiny", "messages": [{"role": "user", "content": prompt}],
                         "temperature": 0, "max_tokens": max_tokens})
    return {"status": r.status_code, **(r.json() if r.status_code == 200 else {"error": r.text})}


def expected_text(reference, prompt: str, max_tokens: int = 12) -> str:
    _, tok = reference
    return tok.decode(local_greedy(reference, [{"role": "user", "content": prompt}], max_tokens),
                      skip_special_tokens=True)


def trust(swarm) -> dict:
    return httpx.get(f"{swarm.base_url}/verifier", headers=AUTH, timeout=10).json()["nodes"]


def node_ids_by_proc(swarm) -> dict[str, str]:
    by_pid = {n["pid"]: n["node_id"] for n in node_stats(swarm)}
    return {name: by_pid.get(proc.pid) for name, proc in swarm.procs.items()
            if name.startswith("node")}


@pytest.fixture(scope="module")
def guarded_swarm(tmp_path_factory, tiny_model_dir):
    """Honest nodes that work for their own gateway only (node0-2), a shortcut cheater on layers
    0:1 (node3), and one honest node on layers 1:3 open to any gateway that signs (node4)."""
    from serve.up import gateway_key

    home = tiny_home(tmp_path_factory, tiny_model_dir)
    ours = ["--gateway-key", gateway_key(home).public_hex]
    modes = ["honest", "honest", "honest", "shortcut", "honest"]
    args = [["--cheat", m] + (ours if i < 4 else []) for i, m in enumerate(modes)]
    spec = SwarmSpec(model="tiny@production", spans=[(0, 1), (1, 3), (3, 4), (0, 1), (1, 3)],
                     api_keys=["sk-test"], node_module="tests.serve.cheaters", node_args=args,
                     timeout_s=5, verify_interval_s=1.0, verify_new_interval_s=0.3)
    swarm = LocalSwarm(spec, home, num_layers=4).start(wait_s=300)
    yield swarm
    swarm.stop()


def attack_node(url: str, reply_port: int | None = None) -> dict[str, str]:
    args = [sys.executable, "-m", "tests.serve.attacker", "frames", url]
    out = subprocess.run(args + ([str(reply_port)] if reply_port else []), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hostile_frames_from_anyone_are_refused_and_nothing_crashes(guarded_swarm, reference):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    dialled = []

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not dialled:
            try:
                conn, _ = listener.accept()
                dialled.append(conn)
            except OSError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    urls = {name: next(n["url"] for n in node_stats(guarded_swarm) if n["node_id"] == node_id)
            for name, node_id in node_ids_by_proc(guarded_swarm).items()}
    port = listener.getsockname()[1]
    # (an open node works for any gateway that signs, and so would dial what one names)
    guarded, open_ = attack_node(urls["node1"], port), attack_node(urls["node4"])
    dialled.append(None)  # stop the watcher
    watcher.join()
    listener.close()
    assert dialled == [None], "a node dialled the address an unlisted gateway named"
    # what anyone can get wrong before a node even looks at who signed
    for answers in (guarded, open_):
        for case, code in {"forged-ticket": "ticket-signature", "empty-route": "route",
                           "id-not-of-key": "route", "huge-challenge": "challenge",
                           "unsigned-challenge": "challenge-signature", "audit-of-others": "audit",
                           "close-of-others": "nothing", "garbage": "nothing",
                           "truncated": "nothing"}.items():
            assert answers[case] == code, (case, answers)
        assert answers["oversized-frame"].startswith("closed 1009"), answers
    # a node that works for its own gateway only refuses every other signer
    for case in ("dial-anywhere", "hop-out-of-range", "negative-hop", "nan-activations",
                 "past-the-context", "count-mismatch", "untagged-order", "no-order-tags"):
        assert guarded[case] == "gateway-key", (case, guarded)
    # an open node checks everything else
    assert open_["hop-out-of-range"] == open_["negative-hop"] == "route", open_
    assert open_["nan-activations"] == open_["count-mismatch"] == "bad-tensor", open_
    assert open_["past-the-context"] == "context", open_
    assert open_["untagged-order"] == open_["no-order-tags"] == "order-tag", open_
    # every node still runs, and the swarm still answers right
    assert all(p.poll() is None for p in guarded_swarm.procs.values())
    for prompt in PROMPTS[:2]:
        body = chat(guarded_swarm, prompt)
        assert body["status"] == 200, body
        assert body["choices"][0]["message"]["content"] == expected_text(reference, prompt)


def test_a_first_hop_that_answers_for_the_chain_is_evicted(guarded_swarm, reference):
    """Requests arrive together, so the gateway's load-aware routing sends some through the
    cheater whichever replica of layers 0:1 it measured faster."""
    from concurrent.futures import ThreadPoolExecutor

    cheater = node_ids_by_proc(guarded_swarm)["node3"]
    seen_through_cheater = 0
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        while time.monotonic() < deadline and trust(guarded_swarm).get(cheater, {}).get(
                "status") != "evicted":
            bodies = list(pool.map(lambda p: chat(guarded_swarm, p), PROMPTS))
            for prompt, body in zip(PROMPTS, bodies):
                assert body["status"] == 200, body
                assert body["choices"][0]["message"]["content"] == expected_text(reference,
                                                                                 prompt)
                seen_through_cheater += cheater in body["shoal"]["route"]
    state = trust(guarded_swarm)[cheater]
    assert state["status"] == "evicted" and "shortcut" in state["reason"], state
    assert seen_through_cheater == 0  # no answer ever came through it


@pytest.fixture(scope="module", params=sorted(RATIONAL))
def rational_swarm(request, tmp_path_factory, tiny_model_dir):
    """The only nodes for layers 1:3 are two rational cheaters of one kind: every request goes
    through one of them, and every session is mirrored (the rate is a setting; 1.0 here so the
    test needs few requests)."""
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    modes = ["honest", request.param, request.param, "honest"]
    spec = SwarmSpec(model="tiny@production", spans=[(0, 1), (1, 3), (1, 3), (3, 4)],
                     api_keys=["sk-test"], node_module="tests.serve.cheaters",
                     node_args=[["--cheat", m] for m in modes], drafter="off",
                     verify_interval_s=1.0, verify_new_interval_s=0.3, spot_check_sessions=1.0)
    swarm = LocalSwarm(spec, home, num_layers=4).start(wait_s=300)
    swarm.mode = request.param
    yield swarm
    swarm.stop()


MAX_REQUESTS = 40
"""Each rational cheater is evicted before it has served this many requests (stated bound)."""


def test_rational_cheaters_are_caught_on_real_traffic(rational_swarm, reference):
    ids = node_ids_by_proc(rational_swarm)
    cheaters = {ids["node1"], ids["node2"]}
    evicted_at: dict[str, float] = {}
    served: dict[str, int] = {c: 0 for c in cheaters}
    late = []
    for i in range(4 * MAX_REQUESTS):
        state = trust(rational_swarm)
        for c in cheaters:
            if state.get(c, {}).get("status") == "evicted" and c not in evicted_at:
                evicted_at[c] = time.monotonic()
                assert "spot-check" in state[c]["reason"], state[c]
        if len(evicted_at) == len(cheaters):
            break
        prompt = PROMPTS[i % len(PROMPTS)]
        t0 = time.monotonic()
        body = chat(rational_swarm, prompt)
        if body["status"] != 200:
            continue
        for c in body["shoal"]["route"]:
            if c in cheaters:
                served[c] += 1
                if c in evicted_at and evicted_at[c] < t0:
                    late.append((c, body["shoal"]["route"]))
        time.sleep(0.3)  # the audit of the session that just ended
    print(f"{rational_swarm.mode}: requests served through each cheater before eviction "
          f"{sorted(served.values())} (bound {MAX_REQUESTS})")
    assert set(evicted_at) == cheaters, (rational_swarm.mode, served, trust(rational_swarm))
    assert all(n < MAX_REQUESTS for n in served.values()), served
    assert late == []  # nothing computed through an evicted node was answered
    # proofs and canaries never caught them: possession and recognisable checks are not enough
    events = trust(rational_swarm)
    assert all("spot-check" in events[c]["reason"] for c in cheaters)
