"""No tracker: node and gateway processes find each other through a private DHT swarm (one
invite), two gateways route on their own, the bootstrap peer and a replica carrying streams can
die mid-stream without changing a token, and a process without the invite can neither read the
swarm's records nor announce into it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from serve.config import DhtConfig
from serve.dht import DhtPeer
from serve.dht_discovery import DhtDiscovery
from serve.discovery import NodeInfo
from serve.invite import Peer
from serve.up import LocalSwarm, SwarmSpec, free_port
from tests.serve.conftest import local_greedy, tiny_home
from tests.serve.test_failover import stream_text

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}
MESSAGES = [{"role": "user", "content": "the quick brown fox"}]
STREAM_TOKENS = 200
STREAM_DELAY_MS = 8.0
"""One-way delay of every hop while the streams run: 200 tokens then take seconds, long enough
for the nodes' records (announced every `announce_s`) to show the streams' sessions."""


@pytest.fixture(scope="module")
def dht_swarm(tmp_path_factory, tiny_model_dir):
    """6 nodes (0:2 and 2:4 twice each, a full-model node, a third 0:2) and 2 gateways: 8
    processes, no tracker; node0 and node1 are the invite's bootstrap peers. A latency relay
    sits in front of every hop (no delay but while a test sets one)."""
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    spec = SwarmSpec(model="tiny@production",
                     spans=[(0, 2), (2, 4), (0, 2), (2, 4), (0, 4), (0, 2)], dht=True,
                     gateways=2, api_keys=["sk-test"], timeout_s=5, relay=True)
    swarm = LocalSwarm(spec, home, num_layers=4).start()
    yield swarm
    swarm.stop()


def greedy_text(base_url: str) -> str:
    r = httpx.post(f"{base_url}/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": 24})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def member(swarm: LocalSwarm) -> DhtDiscovery:
    """A reader holding the invite, in this process (the gateways' own code path); it joins
    through the invite's peers and the first gateway's (any member can bootstrap)."""
    invite = swarm.invite.with_peers([Peer(host="127.0.0.1", port=swarm.dht_ports["gateway"])])
    return DhtDiscovery(DhtPeer(DhtConfig(invite=invite, port=free_port(), host="127.0.0.1")))


def test_both_gateways_without_a_tracker_answer_as_generate_does(dht_swarm, reference):
    assert "tracker" not in dht_swarm.procs and len(dht_swarm.base_urls) == 2
    assert sum(name.startswith("node") for name in dht_swarm.procs) == 6
    _, tok = reference
    expected = tok.decode(local_greedy(reference, MESSAGES, 24), skip_special_tokens=True)
    for url in dht_swarm.base_urls:
        assert greedy_text(url) == expected


def test_status_shows_the_nodes_the_dht_holds(dht_swarm, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    async def fresh_view() -> int:
        reader = member(dht_swarm)
        try:
            await reader.refresh()
            return len(reader.listed())
        finally:
            reader.peer.stop()

    # a fresh reader counts a node once most index holders list it: wait until two fresh
    # lookups in a row see all 6 (the 6th node may have announced moments ago)
    deadline, seen = time.monotonic() + 30, []
    while seen[-2:] != [6, 6] and time.monotonic() < deadline:
        seen.append(asyncio.run(fresh_view()))
    assert seen[-2:] == [6, 6], seen
    invite = tmp_path / "invite.txt"
    invite.write_text(dht_swarm.invite.encode() + "\n")
    shown = CliRunner().invoke(app, ["status", "--join", f"@{invite}"],
                               env={"SHOAL_HOME": str(dht_swarm.home), "COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "nodes at the DHT of swarm 'local'" in shown.output
    nodes_table = shown.output.split("channels at")[0]
    rows = [[cell.strip() for cell in line.split("│")][1:-1]
            for line in nodes_table.splitlines() if line.startswith("│")]
    # every node, each record verified, none evicted: node id, layers, …, trust
    assert sorted(row[1] for row in rows) == ["0:2"] * 3 + ["0:4"] + ["2:4"] * 2, shown.output
    assert all(len(row[0]) == 32 and row[4] == "ok" for row in rows), shown.output


def test_killing_the_bootstrap_peer_and_a_replica_mid_stream_keeps_both_gateways_text(
        dht_swarm, reference):
    _, tok = reference
    expected = tok.decode(local_greedy(reference, MESSAGES, STREAM_TOKENS),
                          skip_special_tokens=True)
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 0,
            "max_tokens": STREAM_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, "speculation": {"drafter": "off"}}
    bootstrap = dht_swarm.procs["node0"].pid
    results: dict[str, tuple[str, str, dict]] = {}
    chunks = {url: threading.Event() for url in dht_swarm.base_urls}

    def stream(swarm_url: str) -> None:
        results[swarm_url] = stream_text(SimpleNamespace(base_url=swarm_url), body,
                                         on_chunk=lambda i: i >= 3 and chunks[swarm_url].set())

    async def kill_mid_stream() -> tuple[list[str], float]:
        """Kill node0 and a node whose own record says it holds a session, while both streams
        run (after their first chunks); then time both nodes' departure from the DHT view."""
        reader = member(dht_swarm)
        deadline = time.monotonic() + 15  # earlier requests' sessions are closed by now
        await reader.refresh()
        while any(n.sessions for n in reader.listed()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            await reader.refresh()
        threads = [threading.Thread(target=stream, args=(url,)) for url in dht_swarm.base_urls]
        started = time.time()
        for t in threads:
            t.start()
        killed: list[str] = []
        while not all(e.is_set() for e in chunks.values()):
            await asyncio.sleep(0.02)
        carrying: list[NodeInfo] = []
        while not carrying and all(t.is_alive() for t in threads):
            await reader.refresh()
            carrying = [n for n in reader.listed()
                        if n.sessions and n.issued_at > started and n.pid != bootstrap]
        if carrying and all(t.is_alive() for t in threads):
            pids = {p.pid: name for name, p in dht_swarm.procs.items()}
            # the other bootstrap peer only if nothing else carries a stream, most sessions first
            victim = pids[min(carrying, key=lambda n: (pids[n.pid] == "node1", -n.sessions)).pid]
            dht_swarm.kill("node0")
            dht_swarm.kill(victim)
            killed = ["node0", victim]
        died, dead = time.monotonic(), {dht_swarm.procs[name].pid for name in killed}
        while dead & {n.pid for n in reader.listed()}:
            await reader.refresh()
            await asyncio.sleep(0.2)
        gone = time.monotonic() - died
        for t in threads:
            await asyncio.to_thread(t.join)
        await reader.refresh()
        remaining = {n.pid for n in reader.listed()}
        reader.peer.stop()
        assert len(remaining) == 6 - len(killed) and not remaining & dead, remaining
        return killed, gone

    t0 = time.monotonic()
    dht_swarm.set_delay(STREAM_DELAY_MS)
    try:
        killed, gone_s = asyncio.run(kill_mid_stream())
    finally:
        dht_swarm.set_delay(0)
    print(f"streams took {time.monotonic() - t0:.1f} s; killed {killed}; both left the DHT "
          f"view {gone_s:.1f} s after their death")
    assert killed, "the streams ended before a node carrying them showed in the DHT"
    for url in dht_swarm.base_urls:
        text, finish, _ = results[url]
        assert (text, finish) == (expected, "length"), url
    assert sum(ext["failovers"] for _, _, ext in results.values()) >= 1, results
    config = DhtConfig(invite=dht_swarm.invite)
    assert gone_s <= config.ttl_s + config.refresh_s + 2.0, gone_s
    short = tok.decode(local_greedy(reference, MESSAGES, 24), skip_special_tokens=True)
    for url in dht_swarm.base_urls:  # new requests route around both dead nodes
        assert greedy_text(url) == short


def test_a_process_without_the_invite_cannot_read_or_announce(dht_swarm):
    async def view() -> list:
        reader = member(dht_swarm)
        await reader.refresh()
        nodes = await reader.nodes()
        reader.peer.stop()
        return nodes

    live = asyncio.run(view())
    keys = DhtPeer(DhtConfig(invite=dht_swarm.invite)).keys
    out = subprocess.run(
        [sys.executable, "-m", "tests.serve.dht_attacker",
         f"127.0.0.1:{dht_swarm.dht_ports['gateway']}", keys.index.hex(),
         keys.node_key(live[0].node_id).hex()], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peers"] >= 3 and result["held"] >= 1  # it reached the swarm's peers…
    assert result["readable"] == 0  # …saw only sealed bytes…
    assert result["stores"] and not any(result["stores"].values()), result  # …and stored nothing
    after = asyncio.run(view())
    assert result["node_id"] not in {n.node_id for n in after}
    assert {n.node_id for n in after} == {n.node_id for n in live}
