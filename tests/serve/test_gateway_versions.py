"""The gateway API serves each request entirely on one version's head: after a rollout switches
the current version, prompts are tokenized, budgeted and decoded with the new version's tokenizer
and context, not the first version's."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from serve.discovery import StaticDiscovery
from serve.gateway.api import GatewayState, Runtime, create_app
from serve.gateway.engine import Engine
from serve.gateway.head import Head
from serve.gateway.pipeline import Pipeline
from serve.rollout import VersionSet

PREAMBLE = "<|im_start|>system\nthe quick brown fox jumps over the lazy dog<|im_end|>\n"


def _runtime(version: str, directory) -> Runtime:
    head = Head(directory)
    return Runtime(version, Engine(head, Pipeline(StaticDiscovery([]), head.num_layers, version)))


@pytest.fixture(scope="module")
def two_versions(tiny_model_dir, tmp_path_factory):
    """v1: the tiny model (context 256). v2: same weights, a 40-token context and a chat
    template with a system preamble, so its prompts tokenize longer."""
    v2_dir = tmp_path_factory.mktemp("tiny-v2-head")
    shutil.copytree(tiny_model_dir, v2_dir, dirs_exist_ok=True)
    config = json.loads((v2_dir / "config.json").read_text())
    (v2_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 40}))
    tok_cfg = json.loads((v2_dir / "tokenizer_config.json").read_text())
    template_file = v2_dir / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text(PREAMBLE + template_file.read_text())
    else:
        tok_cfg["chat_template"] = PREAMBLE + tok_cfg["chat_template"]
        (v2_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return _runtime("sha256:" + "1" * 64, tiny_model_dir), _runtime("sha256:" + "2" * 64, v2_dir)


def test_requests_after_a_switch_use_the_new_versions_head(two_versions):
    v1, v2 = two_versions
    versions = VersionSet(v1.version_id, v1)
    versions.add(v2.version_id, v2)
    state = GatewayState(versions, "tiny")
    client = TestClient(create_app(state))
    messages = [{"role": "user", "content": "hello world"}]
    v2_prompt = len(v2.engine.head.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    v1_prompt = len(v1.engine.head.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert v2_prompt > v1_prompt
    versions.switch(v2.version_id)  # what the rollout does once the swarm serves v2
    body = {"model": "tiny", "messages": messages, "max_tokens": 30}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"prompt {v2_prompt} tokens" in error["message"]
    assert "context of 40" in error["message"]
    # fits v1's 256-token context, not v2's 40
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello world",
                                             "max_tokens": 39})
    assert r.status_code == 400 and "context of 40" in r.json()["error"]["message"], r.text


def test_version_set_keeps_what_is_in_use_and_drops_drained_versions():
    versions = VersionSet("v1", "one")
    versions.add("v2", "two")
    assert versions.current == "v1" and versions.active == "one"
    assert versions.switch("v2") == "v1" and versions.active == "two"
    assert versions.drained(in_use={"v1"}, grace_s=0.0) == []  # a session still runs on v1
    assert versions.drained(in_use=set(), grace_s=3600.0) == []  # within the grace period
    assert versions.drained(in_use=set(), grace_s=0.0) == [("v1", "one")]
    assert "v1" not in versions and list(versions) == ["v2"]
    with pytest.raises(KeyError):
        versions.switch("v3")
