"""docs/deploy.md, followed on separate hosts: a registry host, three node hosts and a gateway
host, each a network namespace with its own address, its own SHOAL_HOME and nothing shared but
the wire. The guide's commands bring the swarm up (tiny random models): the official openai SDK on
the gateway host gets the greedy text of in-process generate, over hops that are wss:// pinned to
the nodes' lasting keys, from a registry read over HTTP and pinned by its fingerprint; a version
promoted on the registry host then rolls out to every node and the gateway, and answers as its
own in-process generate does."""

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
SPANS = ["0:1", "1:3", "3:4"]
REGISTRY_PORT, TRACKER_PORT, NODE_PORT, GATEWAY_PORT, RETURN_PORT = 8100, 7000, 7100, 8000, 7200
WATCH = ["--watch", "production", "--watch-poll", "0.5"]


def shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def expected_texts(model_dir: Path) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = (AutoModelForCausalLM.from_pretrained(model_dir).eval(),
                 AutoTokenizer.from_pretrained(model_dir))
    with torch.no_grad():
        return [reference[1].decode(local_greedy(reference, [{"role": "user", "content": p}], 16),
                                    skip_special_tokens=True) for p in PROMPTS]


def test_a_swarm_of_separate_hosts_answers_like_in_process_generate(
        tmp_path_factory, tiny_model_dir):
    why_not = can_make_namespaces()
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
            hosts.run(f"node{i}", shoal(
                "node", "--model", "tiny@production", "--layers", span, "--host", "0.0.0.0",
                "--advertise", address, "--port", str(NODE_PORT), "--tracker", tracker,
                "--key", str(home / "node.pem"), "--root-fingerprint", fingerprint,
                "--threads", "1", *WATCH), env=env(home), log=logs / f"node{i}.log")
        hosts.run("gateway", shoal(
            "gateway", "--model", "tiny@production", "--tracker",
            f"http://127.0.0.1:{TRACKER_PORT}", "--host", "0.0.0.0", "--advertise", gateway,
            "--port", str(GATEWAY_PORT), "--return-port", str(RETURN_PORT), "--key", "gateway",
            "--root-fingerprint", fingerprint, "--api-key", "sk-test", *WATCH),
            env=env(gateway_home), log=logs / "gateway.log")

        def ask(version: str) -> dict:
            return json.loads(hosts.check_output("gateway", [
                sys.executable, "-m", "tests.deploy.sdk_client",
                f"http://{gateway}:{GATEWAY_PORT}", tracker, "sk-test", "150", version,
                *PROMPTS], env={**base_env, "PYTHONPATH": os.getcwd()}, timeout=200))

        try:
            before = ask("-")
            imported = hosts.check_output("registry", shoal(
                "model", "import", str(second), "--name", "tiny", "--key",
                "maintainer-release"), env=on_registry)
            version = imported.split("@", 1)[1].split()[0]
            hosts.check_output("registry", shoal("promote", version, "--channel",
                                                 "production"), env=on_registry)
            after = ask(version)
        except Exception:
            for log in sorted(logs.iterdir()):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
            raise
    assert before["node_urls"] == sorted(f"wss://{a}:{NODE_PORT}" for a in nodes)
    # the ids the swarm routed through are those of the key files the nodes created
    ids = {node_id_of(load_or_create(home / "node.pem").public_hex) for home in node_homes}
    assert {n for a in before["answers"] for n in a["route"]} == ids
    assert [a["text"] for a in before["answers"]] == expected_texts(tiny_model_dir)
    assert all(a["version"] == version for a in after["answers"])
    assert after["node_versions"] == [version] * 3
    assert {n for a in after["answers"] for n in a["route"]} == ids  # same nodes, new weights
    assert [a["text"] for a in after["answers"]] == expected_texts(second) != \
        expected_texts(tiny_model_dir)
