"""The trace store behind a real gateway: consent, authorization, crash safety, erasure."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import pytest

from serve.up import LocalSwarm, SwarmSpec
from tests.serve.conftest import tiny_home
from traces.store import TraceStore, TraceStoreConfig

pytestmark = pytest.mark.slow
CANARY = "zebra-canary-4411"


@pytest.fixture(scope="module")
def trace_swarm(tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    spec = SwarmSpec(model="tiny@production", nodes=3, traces=True)
    swarm = LocalSwarm(spec, home, num_layers=4)
    store = TraceStore(TraceStoreConfig(uri=str(home / "traces" / "lancedb"),
                                        log_dir=home / "traces" / "log-test-unused"))
    keys = {}
    for name, role in [("alice", "contributor"), ("bob", "contributor"), ("carol", "contributor"),
                       ("dave", "contributor"), ("app", "app"), ("admin", "maintainer")]:
        account = store.create_account(role, name)
        keys[name] = (account.account_id, store.create_key(account.account_id)[1])
    swarm.start()
    swarm.keys, swarm.store = keys, store
    yield swarm
    swarm.stop()


def call(swarm, who: str, method: str, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {swarm.keys[who][1]}"} if who else {}
    return httpx.request(method, f"{swarm.base_url}{path}", headers=headers, timeout=60, **kw)


def chat(swarm, who: str, text: str = "hello", **extra) -> dict:
    r = call(swarm, who, "POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 3,
        "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def stored(swarm, who: str) -> list[dict]:
    r = call(swarm, who, "GET", "/v1/traces", params={"limit": 1000})  # all of them
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_consent_decides_what_is_stored(trace_swarm):
    s = trace_swarm
    assert chat(s, "alice")["shoal"]["trace_id"] is None  # no grant yet
    assert chat(s, "app")["shoal"]["trace_id"] is None  # apps never contribute
    grant = call(s, "alice", "POST", "/v1/grants", json={"scopes": ["sft", "dpo"]}).json()
    kept = chat(s, "alice", "keep me")["shoal"]["trace_id"]
    assert chat(s, "alice", store=False)["shoal"]["trace_id"] is None
    assert chat(s, "alice", metadata={"shoal_store": "false"})["shoal"]["trace_id"] is None
    rows = stored(s, "alice")
    assert [r["request_id"] for r in rows] == [kept]
    assert rows[0]["grant_id"] == grant["grant_id"] and rows[0]["grant_scopes"] == ["dpo", "sft"]
    call(s, "alice", "DELETE", f"/v1/grants/{grant['grant_id']}")
    assert chat(s, "alice")["shoal"]["trace_id"] is None  # revoked
    call(s, "alice", "POST", "/v1/grants", json={"scopes": ["eval"], "days": 1 / 86400})
    time.sleep(1.2)
    assert chat(s, "alice")["shoal"]["trace_id"] is None  # expired
    assert len(stored(s, "alice")) == 1


def test_trace_records_the_sampling_actually_used(trace_swarm):
    """The row holds the parameters the gateway generated with, not the raw request fields:
    `max_completion_tokens` wins over `max_tokens`, and with no maximum the gateway's budget."""
    s = trace_swarm
    call(s, "dave", "POST", "/v1/grants", json={"scopes": ["sft"]})
    capped = call(s, "dave", "POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "capped"}],
        "max_completion_tokens": 2, "max_tokens": 3, "temperature": 0.7, "top_p": 0.9,
        "seed": 7})
    unbounded = call(s, "dave", "POST", "/v1/completions", json={
        "model": "tiny", "prompt": "once upon a time", "temperature": 0})
    assert capped.status_code == 200 and unbounded.status_code == 200, (capped.text,
                                                                          unbounded.text)
    assert capped.json()["usage"]["completion_tokens"] <= 2
    sampling = {r["request_id"]: json.loads(r["sampling_json"]) for r in stored(s, "dave")}
    assert sampling[capped.json()["shoal"]["trace_id"]] == {
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 2, "seed": 7}
    assert sampling[unbounded.json()["shoal"]["trace_id"]] == {
        "temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "seed": None}


def test_authorization_matrix(trace_swarm):
    s = trace_swarm
    call(s, "bob", "POST", "/v1/grants", json={"scopes": ["sft"]})
    bob_trace = chat(s, "bob", "bob's question")["shoal"]["trace_id"]
    cases = [  # (caller, method, path, json body, expected status)
        ("app", "GET", "/v1/traces", None, 403),
        ("app", "POST", "/v1/feedback", {"trace_id": bob_trace, "rating": 1}, 403),
        ("app", "DELETE", f"/v1/traces/{bob_trace}", None, 403),
        ("app", "POST", "/v1/grants", {"scopes": ["sft"]}, 403),
        ("carol", "GET", f"/v1/traces/{bob_trace}", None, 403),
        ("carol", "POST", "/v1/feedback", {"trace_id": bob_trace, "rating": 1}, 403),
        ("carol", "DELETE", f"/v1/traces/{bob_trace}", None, 403),
        ("carol", "GET", f"/v1/traces?contributor={s.keys['bob'][0]}", None, 403),
        ("carol", "DELETE", f"/v1/contributors/{s.keys['bob'][0]}", None, 403),
        ("admin", "POST", "/v1/feedback", {"trace_id": bob_trace, "rating": 1}, 403),
        ("admin", "GET", f"/v1/traces/{bob_trace}", None, 200),
        ("admin", "GET", f"/v1/traces?contributor={s.keys['bob'][0]}", None, 200),
        ("bob", "GET", f"/v1/traces/{bob_trace}", None, 200),
        ("bob", "POST", "/v1/feedback", {"trace_id": bob_trace, "rating": 4}, 200),
        ("bob", "GET", "/v1/traces/export", None, 200),
        ("", "GET", "/v1/traces", None, 401),
    ]
    got = [(c[0], c[1], c[2], call(s, c[0], c[1], c[2], json=c[3]).status_code)
           for c in cases]
    assert got == [(c[0], c[1], c[2], c[4]) for c in cases]
    assert call(s, "carol", "GET", "/v1/traces").json()["data"] == []  # sees nothing of bob's
    export = call(s, "bob", "GET", "/v1/traces/export").text.splitlines()
    assert {line.split('"type": "')[1].split('"')[0] for line in export} == {"trace", "feedback"}


def test_crash_during_a_burst_loses_no_acknowledged_trace(trace_swarm):
    """SIGKILL of the gateway mid-burst, while the CLI reads (and so flushes) the same store from
    another process: the CLI never rotates or drops the segment the gateway appends to, and every
    acknowledged trace is there after the restart."""
    import os
    import subprocess
    import sys

    s = trace_swarm
    call(s, "carol", "POST", "/v1/grants", json={"scopes": ["sft"]})
    returned: list[str] = []
    env = {**os.environ, "SHOAL_HOME": str(s.home)}

    killed = threading.Event()

    def keep_sending(worker: int):
        for i in range(worker, 10**6, 16):
            while len(returned) >= 300 and not killed.is_set():
                time.sleep(0.05)  # a bound on the traces to list afterwards
            if killed.is_set():
                return
            try:
                r = call(s, "carol", "POST", "/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": f"burst {i}"}],
                    "max_tokens": 2, "temperature": 0, "speculation": {"drafter": "off"}})
                if r.status_code == 200:
                    returned.append(r.json()["shoal"]["trace_id"])
            except httpx.HTTPError:
                return  # the gateway died under this request: nothing was acknowledged

    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(keep_sending, w) for w in range(16)]
        cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "traces", "list", "--limit",
                                "1", "--contributor", s.keys["carol"][0]], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the CLI reads while the gateway appends
        enough = min(len(returned) + 30, 290)
        while len(returned) < max(60, enough) and time.monotonic() < deadline:
            time.sleep(0.02)
        s.kill("gateway")  # mid-burst
        killed.set()
        cf.wait(futures)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert len(returned) >= 60
    s.restart("gateway")
    listed = call(s, "carol", "GET", "/v1/traces?limit=400").json()["data"]
    ids = [r["request_id"] for r in listed]
    assert len(ids) == len(set(ids))
    assert set(returned) <= set(ids)


def test_erasure_through_the_api_leaves_no_bytes(trace_swarm):
    s = trace_swarm
    call(s, "alice", "POST", "/v1/grants", json={"scopes": ["sft"]})
    tid = chat(s, "alice", f"my secret {CANARY}")["shoal"]["trace_id"]
    assert tid and call(s, "alice", "POST", "/v1/feedback", json={
        "trace_id": tid, "correction": f"better {CANARY}"}).status_code == 200
    root = s.home / "traces"
    assert any(CANARY.encode() in p.read_bytes() for p in root.rglob("*") if p.is_file())
    receipt = call(s, "alice", "DELETE", "/v1/contributors/me").json()
    assert receipt["erased"]["traces"] >= 1 and receipt["erased"]["feedback"] >= 1
    leftovers = [p for p in root.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leftovers == []
    assert stored(s, "alice") == []


def test_metrics_report_the_backlog_until_every_trace_is_embedded(trace_swarm):
    s = trace_swarm
    call(s, "bob", "POST", "/v1/grants", json={"scopes": ["sft"]})
    ids = [chat(s, "bob", f"backlog {i}")["shoal"]["trace_id"] for i in range(3)]
    deadline = time.monotonic() + 180
    while True:
        backlog = httpx.get(f"{s.base_url}/metrics", timeout=10).json()["trace_ingestion"]
        if backlog["log_records"] == 0 and backlog["unembedded_rows"] == 0:
            break
        assert time.monotonic() < deadline, backlog
        time.sleep(0.2)
    assert backlog["bound"] == 50_000 and not backlog["over_bound"]
    assert backlog["embedded"] >= 3 and backlog["embedder"] == "static"
    rows = s.store.tables["traces"].search().where(
        f"request_id IN ({', '.join(repr(i) for i in ids)})").limit(None).to_list()
    assert len(rows) == 3 and all(r["embedder"] and r["vector"] is not None for r in rows)


def test_another_tenants_prompt_cannot_be_confirmed_through_the_drafter(trace_swarm):
    """The attack as a tenant would run it: a victim sends a `store: false` prompt; an attacker
    (another key, its own process, the public API only) asks for the same prompt and for one
    nobody sent, with the suffix drafter, and compares the drafted tokens accepted. Text a
    contributor shared under a `drafting` grant is drafted for everyone (what that scope means),
    which shows the comparison would catch a leak."""
    import subprocess
    import sys

    s = trace_swarm
    victim = s.store.create_account("contributor", "victim")
    victim_key = s.store.create_key(victim.account_id)[1]
    s.keys["victim"] = (victim.account_id, victim_key)
    call(s, "victim", "POST", "/v1/grants", json={"scopes": ["sft", "drafting"]})
    secret, control, shared = ("the merger closes friday at nine", "an unrelated control line",
                               "a line the victim shares")

    def victim_sends(text: str, **extra) -> int:
        r = call(s, "victim", "POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 24,
            "temperature": 0, "speculation": {"drafter": "suffix"}, **extra})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"]

    def attacker_probes(*prompts: str) -> dict[str, int]:
        run = subprocess.run(
            [sys.executable, "-m", "tests.serve.drafting_attacker", s.base_url,
             s.keys["app"][1], "24", *prompts], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    assert victim_sends(secret, store=False) >= 8
    accepted = attacker_probes(secret, control)
    assert accepted[secret] <= accepted[control], accepted
    assert victim_sends(shared) >= 8  # stored, granted `drafting`: every caller's drafts use it
    assert attacker_probes(shared)[shared] > accepted[secret] + 4  # the probe detects shared text


def test_routing_policy_is_enforced_and_recorded(trace_swarm):
    """No node of this swarm is attested or allowlisted: a request that requires either is
    refused with a 503 naming the policy, never routed anyway; a trace records its policy."""
    s = trace_swarm
    for policy in ("attested", "allowlist"):
        r = call(s, "app", "POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "routing": {"policy": policy}})
        assert r.status_code == 503, r.text
        assert f"routing policy '{policy}'" in r.json()["error"]["message"]
        streamed = call(s, "app", "POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "stream": True, "routing": {"policy": policy}})
        assert streamed.status_code == 503
    bad = call(s, "app", "POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "routing": {"policy": "trust-me"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "routing.policy"
    call(s, "dave", "POST", "/v1/grants", json={"scopes": ["sft"]})
    done = chat(s, "dave", "routed anywhere", routing={"policy": "any"})
    assert done["shoal"]["routing_policy"] == "any"
    row = call(s, "dave", "GET", f"/v1/traces/{done['shoal']['request_id']}").json()
    assert row["routing_policy"] == "any" and len(row["route"]) == 3
