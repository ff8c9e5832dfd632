"""A request's `tools` travel from capture to the curated row (TRL's `tools` column), and the row
trains on exactly the prompt serving rendered for them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from curate import builders
from curate.records import records_from_rows
from serve.gateway.chat_format import parse_tool_calls, render_messages
from tests.helpers import make_tokenizer
from traces.capture import capture
from traces.store import TraceStore, TraceStoreConfig
from train import data
from train.tasks import tool_schemas


@dataclass
class Body:
    store: bool | None = None
    metadata: dict | None = None


@dataclass
class Outcome:
    prompt_tokens: int = 9
    completion_tokens: int = 4
    route: list = field(default_factory=lambda: ["n1"])
    routing_policy: str = "any"
    drafter: str = "off"
    drafted: int = 0
    accepted: int = 0
    total_s: float = 0.1
    first_token_s: float = 0.05


def test_the_requests_tools_reach_the_training_row_and_render_as_served(tmp_path):
    store = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"), log_dir=tmp_path / "log",
                                        embed=False))
    alice = store.create_account("contributor", "alice")
    store.create_grant(alice, ["sft", "dpo"], 30)
    messages = [{"role": "user", "content": "Weather for Paris in celsius?"}]
    served = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    calls = parse_tool_calls(served)
    rid = capture(store, alice, Body(), messages=messages, completion=served, tool_calls=calls,
                  sampling={}, outcome=Outcome(), version="sha256:" + "ab" * 32,
                  proof_status="verified", tools=tool_schemas())
    store.flush()
    (record,) = records_from_rows(store.query(contributor_id=alice.account_id), [])
    assert record.request_id == rid and list(record.tools) == tool_schemas()
    (row,), _ = builders.sft([record])
    assert row["tools"] == tool_schemas()
    answer = row["messages"][-1]
    assert answer["content"] == "" and answer["tool_calls"][0]["function"]["name"] == "get_weather"

    tok = make_tokenizer(tmp_path / "tok")
    prompt = render_messages(tok, messages, tool_schemas())  # what the gateway fed the model
    (example,) = data.encode_lm(tok, [row], 2048)
    assert example.ids[:len(prompt)] == prompt
    trained = tok.decode([t for t, lab in zip(example.ids, example.labels) if lab != data.IGNORE])
    assert trained.count("<tool_call>") == 1  # the call once, not the text and the call
    assert json.loads(parse_tool_calls(trained)[0]["function"]["arguments"]) == {"city": "Paris"}
