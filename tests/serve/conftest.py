"""Swarm fixtures: real tracker, node and gateway processes on loopback."""

from __future__ import annotations

import pytest
import torch

from flows.config import ShoalConfig
from serve.up import LocalSwarm, SwarmSpec


def tiny_home(tmp_path_factory, tiny_model_dir):
    """A SHOAL_HOME whose registry holds the tiny model on `production`."""
    from flows.genesis import ensure_genesis

    home = tmp_path_factory.mktemp("swarm-home")
    cfg = ShoalConfig(home=home, registry_url=str(home / "registry"))
    ensure_genesis(cfg, say=lambda _: None, source=tiny_model_dir, name="tiny")
    return home


@pytest.fixture(scope="session")
def tiny_swarm(tmp_path_factory, tiny_model_dir):
    """3 nodes splitting the tiny model's 4 layers, tracker and gateway."""
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    swarm = LocalSwarm(SwarmSpec(model="tiny@production", nodes=3, api_keys=["sk-test"]),
                       home, num_layers=4).start()
    yield swarm
    swarm.stop()


def node_stats(swarm: LocalSwarm) -> list[dict]:
    import httpx

    return httpx.get(f"{swarm.tracker_url}/nodes", timeout=5).json()


@pytest.fixture(scope="session")
def reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def local_greedy(reference, messages, max_tokens: int) -> list[int]:
    model, tok = reference
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                  return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()
