"""The gateway against OpenAI's API through the official `openai` SDK (sync and async) on a real
swarm: streaming with `include_usage`, tools, logprobs, errors as the SDK's typed exceptions, and
the sampling parameters the gateway honours (response_format, logit_bias, penalties, stop, echo)
checked token for token against the same rule applied to the in-process model."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
import torch
from openai import AsyncOpenAI, OpenAI

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "the quick brown fox"}]
BOOL_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
               "additionalProperties": False}


def client(swarm) -> OpenAI:
    return OpenAI(base_url=f"{swarm.base_url}/v1", api_key="sk-test", max_retries=0)


def shaped_greedy(reference, messages, max_tokens: int, bias: dict[int, float] | None = None,
                  presence: float = 0.0, frequency: float = 0.0) -> list[int]:
    """Greedy decoding of the in-process model with OpenAI's logit_bias and penalties."""
    model, tok = reference
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                  return_tensors="pt")["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.cat([ids, torch.tensor([out], dtype=torch.long)], 1)
                           if out else ids).logits[0, -1].float()
            for t, b in (bias or {}).items():
                logits[t] += b
            for t in set(out):
                logits[t] -= frequency * out.count(t) + presence
            token = int(logits.argmax())
            if token == tok.eos_token_id:
                break
            out.append(token)
    return out


def test_async_stream_with_include_usage_and_logprobs(tiny_swarm):
    async def run():
        api = AsyncOpenAI(base_url=f"{tiny_swarm.base_url}/v1", api_key="sk-test",
                          max_retries=0)
        full = await api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12,
                                                 temperature=0, logprobs=True, top_logprobs=3)
        chunks = [c async for c in await api.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True})]
        await api.close()
        return full, chunks

    full, chunks = asyncio.run(run())
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens
    assert all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content)
    assert all(c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and not chunks[-1].choices  # one usage chunk, last, no choices
    assert usage[0].completion_tokens == full.usage.completion_tokens
    assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens


def test_tools_and_tool_results_round_trip(tiny_swarm):
    api = client(tiny_swarm)
    tools = [{"type": "function", "function": {"name": "add"}}]  # the tiny context is 256
    history = [{"role": "user", "content": "add"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function",
                    "function": {"name": "add", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "3"}]
    r = api.chat.completions.create(model="tiny", messages=history, tools=tools,
                                    tool_choice="auto", max_tokens=6, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="tiny", messages=history, tools=tools,
                                    tool_choice="required", max_tokens=6)
    assert err.value.body["param"] == "tool_choice"


def test_completions_logprobs_and_echo(tiny_swarm):
    api = client(tiny_swarm)
    r = api.completions.create(model="tiny", prompt="hello world", max_tokens=6, temperature=0,
                               logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    echoed = api.completions.create(model="tiny", prompt="hello world", max_tokens=6,
                                    temperature=0, echo=True)
    assert echoed.choices[0].text == "hello world" + r.choices[0].text
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model="tiny", prompt="hello world", max_tokens=6, temperature=0, echo=True,
        stream=True) if c.choices)
    assert streamed == echoed.choices[0].text


def test_errors_arrive_as_the_sdks_typed_exceptions(tiny_swarm):
    api = client(tiny_swarm)
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="tiny", messages=MESSAGES, seed=2**64)
    assert err.value.body["param"] == "seed"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{tiny_swarm.base_url}/v1", api_key="wrong",
               max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError) as err:
        api.chat.completions.create(model="tiny", messages=[
            {"role": "user", "content": "x" * (3 * 2**20)}])
    assert err.value.status_code == 413


def test_json_schema_is_enforced(tiny_swarm):
    api = client(tiny_swarm)
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": BOOL_SCHEMA}}
    for temperature in (0.0, 1.0):
        r = api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40,
                                        temperature=temperature, seed=7, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)
    streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=40, temperature=0, response_format=fmt,
        stream=True) if c.choices)
    assert isinstance(json.loads(streamed)["ok"], bool)
    r = api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60,
                                    temperature=0, response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_logit_bias_and_penalties_match_the_rule(tiny_swarm, reference):
    api = client(tiny_swarm)
    _, tok = reference
    plain = shaped_greedy(reference, MESSAGES, 10)
    cases = [({plain[0]: -100.0}, 0.0, 0.0), ({plain[1]: 5.0}, 0.0, 0.0),
             ({}, 0.0, 2.0), ({}, 2.0, 0.0)]
    for bias, presence, frequency in cases:
        want = shaped_greedy(reference, MESSAGES, 10, bias, presence, frequency)
        r = api.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=10, temperature=0,
            logit_bias={str(t): b for t, b in bias.items()}, presence_penalty=presence,
            frequency_penalty=frequency)
        assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True), (
            bias, presence, frequency)
    assert shaped_greedy(reference, MESSAGES, 10, {plain[0]: -100.0}) != plain  # it bites


def test_stop_list_cuts_at_the_first_stop(tiny_swarm):
    api = client(tiny_swarm)
    full = api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24,
                                       temperature=0).choices[0].message.content
    assert len(full) > 8, full
    stops = [full[6:9], "never-appears-zz"]
    r = api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24,
                                    temperature=0, stop=stops)
    assert r.choices[0].message.content == full[:full.find(stops[0])]
    assert r.choices[0].finish_reason == "stop"


def test_a_temperature_next_to_zero_is_greedy(tiny_swarm):
    """Logits divided by 1e-300 overflow; such temperatures sample the argmax, as 0 does."""
    api = client(tiny_swarm)
    texts = {t: api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                            temperature=t, seed=1).choices[0].message.content
             for t in (0.0, 1e-300, 5e-324)}
    assert len(set(texts.values())) == 1, texts
