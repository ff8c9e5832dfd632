"""The task items the workload sends and the evaluation scores: checks that cannot be fooled, and
training material disjoint from the sets that judge it."""

from __future__ import annotations

import json

from train import evalsets
from train.evaluate import score
from train.tasks import GENERAL, answer_text, check_call, general_items, items


def test_tool_call_check_is_exact():
    item = items(1, seed=0)[0]
    call = item["answer"]
    assert check_call(answer_text(call), call)
    assert check_call(f"Sure: {answer_text(call)} done", call)
    wrong_name = {**call, "name": "nope"}
    assert not check_call(answer_text(wrong_name), call)
    key = sorted(call["arguments"])[0]
    changed = {**call, "arguments": {**call["arguments"], key: "something else"}}
    assert not check_call(answer_text(changed), call)
    assert not check_call(f'"{call["name"]}"', call)


def test_workload_items_are_disjoint_from_every_evaluation_set():
    questions = {m["content"] for it in items(400, seed=1) for m in it["messages"]
                 if m["role"] == "user"}
    questions |= {q for q, _, _ in GENERAL}
    for name in ("tools_heldout", "regression"):
        judged = {m["content"] for it in evalsets.load(name) for m in it["messages"]
                  if m["role"] == "user"}
        assert not questions & judged, name


def test_general_items_score_their_own_reply_and_not_a_bare_call():
    chosen = general_items(len(GENERAL) + 5, seed=3)
    assert len(chosen) == len(GENERAL) == len({it["messages"][0]["content"] for it in chosen})
    for it in chosen:
        assert [m["role"] for m in it["messages"]] == ["user"]  # no tools offered
        assert score(it, it["reply"])
        assert not score(it, answer_text({"name": "get_weather", "arguments": {}}))


def test_api_items_render_exactly_as_an_apps_tools_request(tmp_path):
    """A contributor's system-prompt item trains the very tokens an app's `tools=` request is
    served with, and its correction is scored (and parsed) as the API's `tool_calls`."""
    from openai.types.chat import ChatCompletionMessage

    from flows.workload import correct_reply, score_message
    from serve.gateway.chat_format import render_messages
    from tests.helpers import make_tokenizer
    from train.tasks import tool_schemas, via_tools

    tok = make_tokenizer(tmp_path)
    item = items(1, seed=4, api=True)[0]
    user = [m for m in item["messages"] if m["role"] == "user"]
    assert render_messages(tok, item["messages"], tokenize=False) == \
        render_messages(tok, user, tool_schemas(), tokenize=False)
    reply = correct_reply(item)
    assert score(item, reply) and not score(item, answer_text(item["answer"]))
    call = {"id": "c", "type": "function", "function": {
        "name": item["answer"]["name"], "arguments": json.dumps(item["answer"]["arguments"])}}
    via_api = via_tools(item)
    assert via_api["messages"] == user and via_api["tools"] == tool_schemas()
    assert score_message(via_api, ChatCompletionMessage(role="assistant", tool_calls=[call]))
    assert not score_message(via_api, ChatCompletionMessage(role="assistant", content=reply))
