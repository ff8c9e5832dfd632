"""Rolling out a new version to a live swarm: a stream that started before the promotion finishes
on its version without an error; new requests move to the new version once every span serves it;
a rollback record moves them back; a forged channel head changes nothing and is reported."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch

from flows.config import ShoalConfig
from flows.genesis import ensure_keys
from serve.up import LocalSwarm, SwarmSpec
from tests.helpers import make_tiny_llama
from tests.serve.conftest import local_greedy, node_stats, tiny_home

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer sk-test"}
MESSAGES = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def rollout(tmp_path_factory, tiny_model_dir):
    """A swarm following `production`, and a second version (other weights) ready to promote."""
    from registry.publish import import_model

    home = tiny_home(tmp_path_factory, tiny_model_dir)
    shoal = ShoalConfig(home=home, registry_url=str(home / "registry"))
    v2_dir = tmp_path_factory.mktemp("tiny-v2")
    make_tiny_llama(v2_dir, seed=1)
    keys = ensure_keys(shoal)
    v2 = import_model(shoal.store(), v2_dir, name="tiny", release_keys=[keys["release"]]).version_id
    v1 = shoal.client().resolve("production")
    spec = SwarmSpec(model="tiny@production", nodes=3, delay_ms=10, api_keys=["sk-test"],
                     watch="production", watch_poll_s=0.3, drain_grace_s=1.0,
                     verify_new_interval_s=0.5)
    swarm = LocalSwarm(spec, home, num_layers=4).start()
    yield {"swarm": swarm, "shoal": shoal, "keys": keys, "v1": v1, "v2": v2, "v2_dir": v2_dir}
    swarm.stop()


def _model(directory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory).eval(), \
        AutoTokenizer.from_pretrained(directory)


def _stream(swarm, max_tokens: int) -> tuple[str, dict]:
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    text, ext = "", {}
    with httpx.stream("POST", f"{swarm.base_url}/v1/chat/completions", json=body,
                      headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if not chunk["choices"]:
                ext = chunk["shoal"]
                continue
            text += chunk["choices"][0]["delta"].get("content") or ""
    return text, ext


def _ask(swarm, max_tokens: int = 12) -> dict:
    r = httpx.post(f"{swarm.base_url}/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"model": "tiny", "messages": MESSAGES, "temperature": 0,
                         "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()


def _wait_current(swarm, version: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{swarm.base_url}/v1/rollout", timeout=5).json()
        if state["current"] == version:
            return
        time.sleep(0.3)
    raise AssertionError(f"gateway still on {state['current']}: {state}")


def _status(swarm, shoal) -> str:
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["status", "--tracker", swarm.tracker_url, "--gateway",
                                      swarm.base_url],
                                env={"SHOAL_HOME": str(shoal.home), "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def _expected(directory, max_tokens: int) -> str:
    model, tok = _model(directory)
    ids = local_greedy((model, tok), MESSAGES, max_tokens)
    return tok.decode(ids, skip_special_tokens=True)


def test_rollout_keeps_streams_consistent_then_moves_new_sessions(rollout, tiny_model_dir):
    from registry.publish import promote

    swarm, shoal, keys = rollout["swarm"], rollout["shoal"], rollout["keys"]
    v1, v2 = rollout["v1"], rollout["v2"]
    assert _ask(swarm)["shoal"]["version"] == v1
    result: dict = {}
    stream = threading.Thread(target=lambda: result.update(zip(("text", "ext"),
                                                               _stream(swarm, 80))))
    stream.start()
    time.sleep(1.0)  # the stream is running on v1 when the channel moves
    promote(shoal.store(), v2, "production", [keys["promote"]], note="rollout test")
    _wait_current(swarm, v2)
    stream.join(timeout=120)
    assert result["ext"]["version"] == v1  # the whole stream stayed on the version it began on
    model, tok = _model(tiny_model_dir)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True,
                                  return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=80, do_sample=False, min_new_tokens=80,
                              pad_token_id=tok.pad_token_id)
    assert result["text"] == tok.decode(full[0, ids.shape[1]:], skip_special_tokens=True)

    after = _ask(swarm)
    assert after["shoal"]["version"] == v2
    assert after["choices"][0]["message"]["content"] == _expected(rollout["v2_dir"], 12)
    nodes = node_stats(swarm)
    assert all(n["version"] == v2 and n["channel"]["ok"] for n in nodes)
    deadline = time.monotonic() + 30  # v1 is unloaded once drained
    while any(v1 in n["versions"] for n in node_stats(swarm)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not any(v1 in n["versions"] for n in node_stats(swarm))

    # rollback: a new signed record pointing at the older version
    promote(shoal.store(), v1, "production", [keys["promote"]], note="rollback")
    _wait_current(swarm, v1)
    back = _ask(swarm)
    assert back["shoal"]["version"] == v1
    assert back["choices"][0]["message"]["content"] == _expected(tiny_model_dir, 12)


@pytest.mark.parametrize("forgery", ["unsigned", "replayed-old-record"])
def test_a_forged_channel_head_changes_nothing_and_is_reported(rollout, forgery):
    swarm, shoal = rollout["swarm"], rollout["shoal"]
    channel = shoal.home / "registry" / "channels" / "production"
    path = channel / "head.json"
    serving = _ask(swarm)["shoal"]["version"]
    other = rollout["v2"] if serving == rollout["v1"] else rollout["v1"]
    original = path.read_text()
    envelope = json.loads(original)
    if forgery == "unsigned":  # points at the other version, claims a higher sequence, no keys
        forged = json.dumps({**envelope, "signed": {**envelope["signed"], "version": other,
                                                    "sequence": envelope["signed"]["sequence"] + 1},
                             "signatures": []})
    else:  # a genuinely signed but older record, replayed as the head (a rollback attack)
        if envelope["signed"]["sequence"] == 1:  # make sure there is an older record to replay
            from registry.publish import promote

            promote(shoal.store(), serving, "production", [rollout["keys"]["promote"]])
            time.sleep(1.0)
            original = path.read_text()
        forged = (channel / "0000000001.json").read_text()
    try:
        path.write_text(forged)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            nodes = node_stats(swarm)
            if all(n["channel"].get("ok") is False for n in nodes):
                break
            time.sleep(0.3)
        assert all(n["channel"]["ok"] is False and n["channel"]["error"] for n in nodes), nodes
        assert all(n["version"] == serving for n in nodes)
        assert _ask(swarm)["shoal"]["version"] == serving
        rollout_state = httpx.get(f"{swarm.base_url}/v1/rollout", timeout=5).json()
        assert rollout_state["current"] == serving
        assert rollout_state["channel"]["ok"] is False
        view = _status(swarm, shoal)
        assert "REFUSED" in view and "new requests →" in view
        assert view.count("production:") >= 3  # every node shows the refused channel
    finally:
        path.write_text(original)
    deadline = time.monotonic() + 30  # the genuine head verifies again
    while time.monotonic() < deadline and not all(n["channel"].get("ok")
                                                  for n in node_stats(swarm)):
        time.sleep(0.3)
    assert all(n["channel"]["ok"] for n in node_stats(swarm))


def test_a_draft_rolls_out_paired_with_its_target(rollout, tiny_model_dir, tmp_path):
    """A draft promoted on `production-draft` for the version being served is fetched, verified
    and used by the gateway; speculation with it leaves the text unchanged."""
    from registry.manifest import Lineage
    from registry.publish import import_model, promote
    from train.model import truncate

    swarm, shoal, keys = rollout["swarm"], rollout["shoal"], rollout["keys"]
    serving = _ask(swarm)["shoal"]["version"]
    target_dir = tiny_model_dir if serving == rollout["v1"] else rollout["v2_dir"]
    model, tok = _model(target_dir)
    truncate(model, 2)
    model.save_pretrained(tmp_path / "draft")
    tok.save_pretrained(tmp_path / "draft")
    draft = import_model(shoal.store(), tmp_path / "draft", name="tiny-draft",
                         release_keys=[keys["release"]],
                         lineage=Lineage(parent=serving, draft_for=serving)).version_id
    promote(shoal.store(), draft, "production-draft", [keys["promote"]], note="draft")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = httpx.get(f"{swarm.base_url}/v1/rollout", timeout=5).json()
        if state["versions"][serving]["draft"] == draft:
            break
        time.sleep(0.3)
    assert state["versions"][serving]["draft"] == draft, state
    r = httpx.post(f"{swarm.base_url}/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"model": "tiny", "messages": MESSAGES, "temperature": 0,
                         "max_tokens": 12, "speculation": {"drafter": "draft_model"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shoal"]["version"] == serving and body["shoal"]["drafted"] > 0
    assert body["choices"][0]["message"]["content"] == _expected(target_dir, 12)
