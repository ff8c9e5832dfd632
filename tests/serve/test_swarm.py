"""A real 3-node swarm on loopback, driven through HTTP and the official openai SDK."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from openai import OpenAI

from tests.serve.conftest import local_greedy, node_stats

pytestmark = pytest.mark.slow

PROMPTS = ["hello world", "the quick brown fox", "a swarm of machines", "def add(a, b):"]


def client(swarm) -> OpenAI:
    return OpenAI(base_url=f"{swarm.base_url}/v1", api_key="sk-test", max_retries=0)


def test_greedy_equals_single_process_generate(tiny_swarm, reference):
    _, tok = reference
    api = client(tiny_swarm)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        expected = local_greedy(reference, messages, 24)
        r = api.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                        max_tokens=24, logprobs=True)
        assert r.choices[0].message.content == tok.decode(expected, skip_special_tokens=True)
        assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
        assert r.usage.completion_tokens == len([t for t in expected if t != tok.eos_token_id])
        assert len(r.model_extra["shoal"]["route"]) == 3


def test_sdk_chat_stream_completions_models(tiny_swarm, reference):
    api = client(tiny_swarm)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    messages = [{"role": "user", "content": "hello world"}]
    full = api.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                       max_tokens=16)
    streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=16, stream=True) if c.choices)
    assert streamed == full.choices[0].message.content
    assert full.choices[0].finish_reason in ("stop", "length")
    done = api.completions.create(model="tiny", prompt="the quick", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    assert done.choices[0].finish_reason in ("stop", "length")


def test_sampling_with_seed_is_reproducible(tiny_swarm):
    api = client(tiny_swarm)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], temperature=1.0,
              top_p=0.9, max_tokens=12, seed=7)
    a = api.chat.completions.create(**kw).choices[0].message.content
    b = api.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_concurrent_streams_are_batched(tiny_swarm, reference):
    _, tok = reference
    before = {n["node_id"]: n["stats"]["batch_sizes"] for n in node_stats(tiny_swarm)}

    async def one(i: int, http: httpx.AsyncClient) -> str:
        body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPTS[i % 4]}],
                "temperature": 0, "max_tokens": 24, "stream": True}
        text = ""
        async with http.stream("POST", f"{tiny_swarm.base_url}/v1/chat/completions", json=body,
                               headers={"Authorization": "Bearer sk-test"}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    import json

                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["delta"].get("content") or ""
        return text

    async def main():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(one(i, http) for i in range(8)))

    texts = asyncio.run(main())
    for i, text in enumerate(texts):
        expected = local_greedy(reference, [{"role": "user", "content": PROMPTS[i % 4]}], 24)
        assert text == tok.decode(expected, skip_special_tokens=True), i
    time.sleep(1.5)  # one heartbeat, so the tracker holds fresh stats
    after = node_stats(tiny_swarm)
    grew = [max(int(k) for k in n["stats"]["batch_sizes"]) for n in after
            if n["stats"]["batch_sizes"] != before.get(n["node_id"])]
    assert grew and max(grew) > 1, f"no batched forward seen: {after}"


@pytest.mark.real_model
def test_default_model_swarm_matches_generate(imported_default):
    """SmolLM2 split 3 x 10 layers answers token for token like single-process generate."""
    from serve.local import LocalModel
    from serve.up import LocalSwarm, SwarmSpec

    reg, version_id, checkout = imported_default
    local = LocalModel.load(checkout)
    prompts = ["What is the capital of France?", "Name three colors.",
               "Write a Python function that adds two numbers."]
    answers = []
    with LocalSwarm(SwarmSpec(model=version_id, nodes=3), reg.path.parent, 30).start() as swarm:
        api = OpenAI(base_url=f"{swarm.base_url}/v1", api_key="none", max_retries=0)
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}]
            expected = local.generate_ids(local.chat_ids(messages), max_new_tokens=20)
            text = local.tokenizer.decode(
                [t for t in expected if t != local.tokenizer.eos_token_id],
                skip_special_tokens=True)
            r = api.chat.completions.create(model="smollm2-135m-instruct", messages=messages,
                                            temperature=0, max_tokens=20)
            assert r.choices[0].message.content == text, prompt
            answers.append(text)
    assert "Paris" in answers[0]
