"""No tracker: node and gateway processes find each other through a private DHT swarm (one
invite), two gateways route on their own, the bootstrap peer can die, and a process without the
invite can neither read the swarm's records nor announce into it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest

from serve.config import DhtConfig
from serve.dht import DhtPeer
from serve.dht_discovery import DhtDiscovery
from serve.up import LocalSwarm, SwarmSpec, free_port
from tests.serve.conftest import local_greedy, tiny_home

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}
MESSAGES = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def dht_swarm(tmp_path_factory, tiny_model_dir):
    """3 nodes (0:2, 2:4 and a full-model node) and 2 gateways; node0 and node1 are the
    invite's bootstrap peers."""
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    spec = SwarmSpec(model="tiny@production", spans=[(0, 2), (2, 4), (0, 4)], dht=True,
                     gateways=2, api_keys=["sk-test"], timeout_s=5)
    swarm = LocalSwarm(spec, home, num_layers=4).start()
    yield swarm
    swarm.stop()


def greedy_text(base_url: str) -> str:
    r = httpx.post(f"{base_url}/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": 24})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def member(swarm: LocalSwarm) -> DhtDiscovery:
    """A reader holding the invite, in this process (the gateways' own code path)."""
    return DhtDiscovery(DhtPeer(DhtConfig(invite=swarm.invite, port=free_port(),
                                          host="127.0.0.1")))


def test_gateways_without_a_tracker_answer_as_generate_does_and_outlive_the_bootstrap_peer(
        dht_swarm, reference):
    assert "tracker" not in dht_swarm.procs and len(dht_swarm.base_urls) == 2
    _, tok = reference
    expected = tok.decode(local_greedy(reference, MESSAGES, 24), skip_special_tokens=True)
    for url in dht_swarm.base_urls:
        assert greedy_text(url) == expected

    async def kill_bootstrap_peer() -> float:
        reader = member(dht_swarm)
        pid = dht_swarm.procs["node0"].pid
        await reader.refresh()
        assert pid in {n.pid for n in await reader.nodes()}
        dht_swarm.kill("node0")
        died = time.monotonic()
        while pid in {n.pid for n in await reader.nodes()}:
            await reader.refresh()
            await asyncio.sleep(0.2)
        gone = time.monotonic() - died
        assert len(await reader.nodes()) == 2
        reader.peer.stop()
        return gone

    gone_s = asyncio.run(kill_bootstrap_peer())
    print(f"the killed node left the DHT view {gone_s:.1f} s after its death")
    config = DhtConfig(invite=dht_swarm.invite)
    assert gone_s <= config.ttl_s + config.refresh_s + 2.0, gone_s
    for url in dht_swarm.base_urls:
        assert greedy_text(url) == expected


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
