"""docs/deploy.md, followed on separate hosts: a registry host (which also runs the NAT relay),
four node hosts and a gateway host, each a network namespace with its own address, its own
SHOAL_HOME and nothing shared but the wire. The first hop's host refuses every inbound connection
(nftables in its namespace, as behind a home NAT) and serves through the relay; layers 1:3 are
served by two hosts. The guide's commands bring the swarm up (tiny random models): the official
openai SDK on the gateway host gets the greedy text of in-process generate, over hops that are
wss:// pinned to the nodes' lasting keys, from a registry read over HTTP and pinned by its
fingerprint; a version promoted on the registry host then rolls out to every node and the
gateway, and answers as its own in-process generate does; and a stream keeps its text when the
host of the 1:3 replica it runs through dies mid-stream."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from registry.client import root_fingerprint
from serve.identity import load_or_create
from serve.records import node_id_of
from tests.deploy.netns import Hosts, can_make_namespaces
from tests.helpers import make_tiny_llama
from tests.serve.conftest import local_greedy, tiny_home

pytestmark = pytest.mark.slow

PROMPTS = ["hello world", "a swarm of machines"]
SPANS = ["0:1", "1:3", "3:4", "1:3"]
"""node0 (behind NAT, relayed) serves 0:1; node1 and node3 both serve 1:3."""
NAT = 0
REPLICATED = "1:3"
STREAM_PROMPT, STREAM_TOKENS = "the quick brown fox", 160
REGISTRY_PORT, TRACKER_PORT, NODE_PORT, GATEWAY_PORT, RETURN_PORT = 8100, 7000, 7100, 8000, 7200
RELAY_PORT = 7300
WATCH = ["--watch", "production", "--watch-poll", "0.5"]


def shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def expected_texts(model_dir: Path, prompts: list[str] = PROMPTS, tokens: int = 16
                   ) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = (AutoModelForCausalLM.from_pretrained(model_dir).eval(),
                 AutoTokenizer.from_pretrained(model_dir))
    with torch.no_grad():
        return [reference[1].decode(local_greedy(reference, [{"role": "user", "content": p}],
                                                 tokens), skip_special_tokens=True)
                for p in prompts]


def test_a_swarm_of_separate_hosts_answers_like_in_process_generate(
        tmp_path_factory, tiny_model_dir):
    why_not = can_make_namespaces(firewall=True)
    if why_not:
        pytest.skip(why_not)
    registry_home = tiny_home(tmp_path_factory, tiny_model_dir)
    fingerprint = root_fingerprint((registry_home / "registry/root/1.root.json").read_bytes())
    second = tmp_path_factory.mktemp("tiny-v2")
    make_tiny_llama(second, seed=1)  # the same architecture and tokenizer, other weights
    logs = tmp_path_factory.mktemp("host-logs")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    base_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    gateway_home = tmp_path_factory.mktemp("gateway-host")
    gateway_key = load_or_create(gateway_home / "keys" / "gateway.pem")  # `shoal keys create`

    def env(home: Path) -> dict[str, str]:
        return {**base_env, "SHOAL_HOME": str(home),
                "SHOAL_REGISTRY": f"http://{hosts.addresses['registry']}:{REGISTRY_PORT}"}

    with Hosts() as hosts:
        registry = hosts.add("registry")
        nodes = [hosts.add(f"node{i}") for i in range(len(SPANS))]
        gateway = hosts.add("gateway")
        hosts.refuse_inbound(f"node{NAT}")
        on_registry = {**base_env, "SHOAL_HOME": str(registry_home)}
        hosts.run("registry", shoal("registry", "serve", "--host", registry, "--port",
                                    str(REGISTRY_PORT)), env=on_registry,
                  log=logs / "registry.log")
        hosts.run("gateway", shoal("tracker", "--host", "0.0.0.0", "--port", str(TRACKER_PORT),
                                   "--verdict-key", gateway_key.public_hex),
                  env=env(gateway_home), log=logs / "tracker.log")
        tracker = f"http://{gateway}:{TRACKER_PORT}"
        node_homes = []
        for i, (address, span) in enumerate(zip(nodes, SPANS)):
            home = tmp_path_factory.mktemp(f"node{i}-host")
            node_homes.append(home)
            # the relayed node binds every address too: what keeps other hosts out is its
            # namespace's firewall, not a missing listener
            reach = ["--via", f"{registry}:{RELAY_PORT}"] if i == NAT else \
                ["--advertise", address]
            hosts.run(f"node{i}", shoal(
                "node", "--model", "tiny@production", "--layers", span, "--host", "0.0.0.0",
                *reach, "--port", str(NODE_PORT), "--tracker", tracker,
                "--key", str(home / "node.pem"), "--root-fingerprint", fingerprint,
                "--threads", "1", *WATCH), env=env(home), log=logs / f"node{i}.log")
        # the relay comes up last: the relayed node announces itself only once its offers are
        # placed there, and its first proof is timed from the challenge, not from the dial
        hosts.run("registry", shoal("nat-relay", "--host", "0.0.0.0", "--port", str(RELAY_PORT)),
                  env=on_registry, log=logs / "nat-relay.log")
        hosts.run("gateway", shoal(
            "gateway", "--model", "tiny@production", "--tracker",
            f"http://127.0.0.1:{TRACKER_PORT}", "--host", "0.0.0.0", "--advertise", gateway,
            "--port", str(GATEWAY_PORT), "--return-port", str(RETURN_PORT), "--key", "gateway",
            "--root-fingerprint", fingerprint, "--api-key", "sk-test", *WATCH,
            "--timeout", "10", "--verdict-log", str(gateway_home / "verdicts.jsonl")),
            env=env(gateway_home), log=logs / "gateway.log")
        on_gateway = {**base_env, "PYTHONPATH": os.getcwd()}

        def ask(version: str) -> dict:
            return json.loads(hosts.check_output("gateway", [
                sys.executable, "-m", "tests.deploy.sdk_client",
                f"http://{gateway}:{GATEWAY_PORT}", tracker, "sk-test", "150", version,
                *PROMPTS], env=on_gateway, timeout=200))

        def probe(host: str, *args: str) -> dict:
            return json.loads(hosts.check_output(host, [
                sys.executable, "-m", "tests.deploy.probe", *args], env=on_gateway))

        try:
            before = ask("-")
            # the relayed host really refuses other hosts, though its node listens on them
            direct = probe("gateway", "dial", nodes[NAT], str(NODE_PORT))
            own = probe(f"node{NAT}", "dial", nodes[NAT], str(NODE_PORT))
            pings = probe("gateway", "pings", tracker, "200")
            imported = hosts.check_output("registry", shoal(
                "model", "import", str(second), "--name", "tiny", "--key",
                "maintainer-release"), env=on_registry)
            version = imported.split("@", 1)[1].split()[0]
            hosts.check_output("registry", shoal("promote", version, "--channel",
                                                 "production"), env=on_registry)
            after = ask(version)
            streamed, killed = stream_and_kill(hosts, gateway, tracker, on_gateway, node_homes,
                                               logs)
        except Exception:
            for log in sorted(logs.iterdir()):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
            raise
    ids = [node_id_of(load_or_create(home / "node.pem").public_hex) for home in node_homes]
    print("ping round trips from the gateway host:",
          json.dumps({f"node{ids.index(n)}": v for n, v in pings.items()}))
    verdicts = [json.loads(line) for line in
                (gateway_home / "verdicts.jsonl").read_text().splitlines()]
    print("proofs (ms):", json.dumps({f"node{i}": [v["detail"] for v in verdicts
                                                   if v["node_id"] == n and v["kind"] == "proof"]
                                      for i, n in enumerate(ids)}))
    print("stream:", json.dumps({k: streamed[k] for k in ("elapsed_s", "killed_at_s")}),
          json.dumps({k: streamed["shoal"][k] for k in ("failovers", "traversals")}))
    # no node failed a check before its host was killed; a challenge for the version a node
    # is still loading during the rollout is answered `wrong-version`, which the verifier
    # records as no evidence (the node only loses routing for it until it proves again)
    assert all(v["ok"] or v["check"] == "wrong-version" for v in verdicts
               if v["node_id"] != killed), [v for v in verdicts if not v["ok"]]
    assert not direct["open"] and own["open"], (direct, own)
    relayed = f"wss://{registry}:{RELAY_PORT}/via/{ids[NAT]}"
    assert before["node_urls"] == sorted(
        [relayed] + [f"wss://{a}:{NODE_PORT}" for i, a in enumerate(nodes) if i != NAT])
    # every answer went through the relayed first hop and one node of each span, all of them
    # nodes of the key files the hosts created
    for answer in before["answers"] + after["answers"]:
        assert answer["route"][0] == ids[NAT] and set(answer["route"]) <= set(ids), answer
        assert len(answer["route"]) == 3
    assert [a["text"] for a in before["answers"]] == expected_texts(tiny_model_dir)
    assert all(a["version"] == version for a in after["answers"])
    assert after["node_versions"] == [version] * len(SPANS)
    assert [a["text"] for a in after["answers"]] == expected_texts(second) != \
        expected_texts(tiny_model_dir)
    # the stream ran through the replica whose host died, failed over to the other, and its
    # text is in-process generate's
    assert killed == streamed["in_use"] and killed in ids, (killed, streamed)
    assert streamed["shoal"]["failovers"] >= 1, streamed
    assert killed not in streamed["shoal"]["route"], streamed
    assert streamed["text"] == expected_texts(second, [STREAM_PROMPT], STREAM_TOKENS)[0]
    # and at once: the node before it saw the dead host's connection close and reported the
    # forward it had passed on, so the gateway did not wait out its traversal timeout
    failovers = [line for line in (logs / "gateway.log").read_text().splitlines()
                 if line.startswith(f"failover after node {killed}")]
    assert failovers and all("next hop closed the connection" in f for f in failovers), failovers


def stream_and_kill(hosts: Hosts, gateway: str, tracker: str, env: dict[str, str],
                    node_homes: list[Path], logs: Path) -> tuple[dict, str]:
    """Stream a long completion from the gateway host; once the client names the 1:3 node the
    stream runs through, kill that node's whole host. Returns the client's result and the id
    killed."""
    import subprocess

    ids = [node_id_of(load_or_create(home / "node.pem").public_hex) for home in node_homes]
    client = hosts.run("gateway", [
        sys.executable, "-m", "tests.deploy.stream_client", f"http://{gateway}:{GATEWAY_PORT}",
        tracker, "sk-test", REPLICATED, str(STREAM_TOKENS), STREAM_PROMPT], env=env,
        log=logs / "stream-client.log", stdout=subprocess.PIPE, text=True)
    killed, killed_at, lines = "", None, []
    for line in client.stdout:
        if not line.startswith("{"):
            continue
        lines.append(line)
        message = json.loads(line)
        if "in_use" in message and "text" not in message:
            killed, killed_at = message["in_use"], message["at_s"]
            hosts.kill(f"node{ids.index(killed)}")
    client.wait(timeout=60)
    if client.returncode != 0 or not lines:
        raise RuntimeError(f"the stream client exited {client.returncode}: {lines}")
    return {**json.loads(lines[-1]), "killed_at_s": killed_at}, killed
