"""`shoal node --layers auto` as a real process joining a running swarm: it reads the tracker,
takes the layers the swarm serves worst (here the half only the full-model node holds), and once
that node is killed the swarm answers through it with the greedy text of in-process generate."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from flows.config import ShoalConfig
from serve.placement import layer_bytes
from serve.up import LocalSwarm, SwarmSpec, free_port
from tests.serve.conftest import local_greedy, node_stats, tiny_home

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "a swarm of machines"}]


def test_an_auto_node_takes_the_weakest_layers_and_carries_traffic(
        tmp_path_factory, tiny_model_dir, reference):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    client = ShoalConfig(home=home, registry_url=str(home / "registry")).client()
    manifest = client.manifest(client.resolve("tiny@production"))
    two_layers_mb = (2 * max(layer_bytes(manifest)) + 1024) / 2**20
    # layers 0:2 are held twice (the full node and a half node), 2:4 once
    spec = SwarmSpec(model="tiny@production", spans=[(0, 4), (0, 2)], api_keys=["sk-test"],
                     timeout_s=5)
    with LocalSwarm(spec, home, num_layers=4).start() as swarm:
        log = open(tmp_path_factory.mktemp("auto-node") / "node.log", "w+")
        auto = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "node", "--model", "tiny@production",
             "--layers", "auto", "--weights-budget-mb", f"{two_layers_mb:.6f}",
             "--port", str(free_port()), "--tracker", swarm.tracker_url, "--threads", "1"],
            env={**os.environ, "SHOAL_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            spans = {}
            while auto.pid not in spans and time.monotonic() < deadline:
                assert auto.poll() is None, log.seek(0) or log.read()
                spans = {n["pid"]: (n["start"], n["end"]) for n in node_stats(swarm)}
                time.sleep(0.3)
            assert spans.get(auto.pid) == (2, 4), (spans, log.seek(0) or log.read())
            swarm.kill("node0")  # the full node: layers 2:4 now exist only on the auto node
            _, tok = reference
            expected = tok.decode(local_greedy(reference, MESSAGES, 16), skip_special_tokens=True)
            deadline = time.monotonic() + 60
            while True:
                r = httpx.post(f"{swarm.base_url}/v1/chat/completions", timeout=60,
                               headers={"Authorization": "Bearer sk-test"},
                               json={"model": "tiny", "messages": MESSAGES, "temperature": 0,
                                     "max_tokens": 16})
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)  # until the gateway notices node0 is gone
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == expected
            auto_id = next(n["node_id"] for n in node_stats(swarm) if n["pid"] == auto.pid)
            assert auto_id in r.json()["shoal"]["route"]
        finally:
            os.killpg(auto.pid, 9)
            auto.wait()
            log.close()
