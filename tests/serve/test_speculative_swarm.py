"""Speculative decoding through real swarms: rollback, identical greedy text, telemetry."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from openai import OpenAI

pytestmark = pytest.mark.slow


def test_rollback_equals_never_seeing_rejected_tokens(tiny_swarm):
    """After rejected drafts, the next decode step's hidden state is what a clean session gets."""
    from serve.discovery import TrackerDiscovery
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline, Session

    home = tiny_swarm.home
    head_dir = next(p for p in (home / "models").iterdir() if p.name.endswith("-head"))
    head = Head(head_dir)

    async def main():
        pipeline = Pipeline(TrackerDiscovery(tiny_swarm.tracker_url), head.num_layers, None)
        await pipeline.start()
        try:
            dirty = Session(pipeline, head.embed_ids)
            await dirty.extend([5, 17, 42])
            await dirty.extend([7, 99, 98, 97])  # one real token, three drafts to be rejected
            dirty.rollback(4)
            got = await dirty.extend([11])
            clean = Session(pipeline, head.embed_ids)
            await clean.extend([5, 17, 42, 7])
            want = await clean.extend([11])
            dirty.close(), clean.close()
            return got, want
        finally:
            await pipeline.stop()

    got, want = asyncio.run(main())
    assert torch.allclose(got, want, atol=1e-5)


def make_draft_model(checkout, out, layers: int = 6):
    """The first `layers` layers of the default model, as a standalone causal LM."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkout)
    config.num_hidden_layers = layers
    full = AutoModelForCausalLM.from_pretrained(checkout, dtype=torch.float32)
    small = AutoModelForCausalLM.from_config(config)
    state = {k: v for k, v in full.state_dict().items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    small.load_state_dict(state, strict=False)
    small.tie_weights()
    small.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(checkout / f, out / f)
    return out


AGENTIC = ('Return this JSON unchanged: {"tool": "search", "arguments": {"query": "weather in '
           'Paris", "limit": 5}, "id": "call_1"}')
PROMPTS = [AGENTIC, "What is the capital of France?", "Tell me a short story about a dragon."]


@pytest.mark.real_model
def test_greedy_text_identical_with_every_drafter(imported_default, tmp_path):
    from registry.publish import import_model
    from serve.up import LocalSwarm, SwarmSpec

    reg, version_id, checkout = imported_default
    draft_src = make_draft_model(checkout, tmp_path / "draft")
    draft_id = import_model(reg.store, draft_src, name="smollm2-draft-6l",
                            release_keys=[reg.keys["release"]]).version_id
    # a key: the suffix index learns a caller's text for that caller's account only, and an
    # open gateway cannot tell callers apart (docs/privacy.md)
    spec = SwarmSpec(model=version_id, nodes=3, draft_model=draft_id, api_keys=["sk-spec"])
    with LocalSwarm(spec, reg.path.parent, 30).start() as swarm:
        api = OpenAI(base_url=f"{swarm.base_url}/v1", api_key="sk-spec", max_retries=0)
        rates = {}
        for prompt in PROMPTS:
            texts = {}
            for drafter in ("off", "prompt_lookup", "suffix", "draft_model", "suffix",
                            "prompt_lookup+suffix", "prompt_lookup+draft_model"):
                r = api.chat.completions.create(
                    model="smollm2-135m-instruct", temperature=0, max_tokens=40,
                    messages=[{"role": "user", "content": prompt}],
                    extra_body={"speculation": {"drafter": drafter}})
                ext = r.model_extra["shoal"]
                assert ext["drafter"] == ("none" if drafter == "off" else drafter)
                texts.setdefault(drafter, []).append(r.choices[0].message.content)
                rates[(prompt, drafter)] = ext
            reference = texts["off"][0]
            assert all(t == reference for ts in texts.values() for t in ts), (prompt, texts)
        # prompt lookup copies the JSON; the suffix index learned the answers it served
        assert rates[(AGENTIC, "prompt_lookup")]["tokens_per_traversal"] > 1.5
        assert rates[(PROMPTS[1], "suffix")]["acceptance_rate"] > 0.5
        metrics = swarm_metrics(swarm)
        assert set(metrics["speculation"]) >= {"none", "prompt_lookup", "suffix", "draft_model",
                                               "prompt_lookup+suffix"}


def swarm_metrics(swarm) -> dict:
    import httpx

    return httpx.get(f"{swarm.base_url}/metrics").json()


def test_bad_drafter_name_is_400(tiny_swarm):
    import httpx

    r = httpx.post(f"{tiny_swarm.base_url}/v1/chat/completions", headers={
        "Authorization": "Bearer sk-test"}, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "speculation": {"drafter": "oracle"}})
    assert r.status_code == 400 and "oracle" in r.json()["error"]["message"]
    assert json.dumps(r.json()).count("available") == 1
