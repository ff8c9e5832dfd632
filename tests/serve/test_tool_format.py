"""One rendering of tools for serving and training: a template without tool support gets the shoal
format, a template with it gets `tools=`, and a call the model writes parses back to the call that
training rendered."""

from __future__ import annotations

import json

import pytest

from serve.gateway.chat_format import parse_tool_calls, render_messages
from tests.helpers import make_tokenizer
from train import data

TOOL = {"type": "function", "function": {"name": "get_stock_price", "parameters": {
    "type": "object", "properties": {"ticker": {"type": "string"}}}}}
CALL = {"id": "c1", "type": "function",
        "function": {"name": "get_stock_price", "arguments": json.dumps({"ticker": "IBM"})}}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_a_template_without_tools_gets_the_shoal_format_and_the_call_parses_back(tok):
    convo = [{"role": "user", "content": "IBM price?"},
             {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    text = render_messages(tok, convo, [TOOL], add_generation_prompt=False, tokenize=False)
    assert '"name": "get_stock_price"' in text.split("<|im_start|>user")[0]  # described
    answer = text.split("<|im_start|>assistant")[-1]
    (parsed,) = parse_tool_calls(answer)
    assert parsed["function"]["name"] == "get_stock_price"
    assert json.loads(parsed["function"]["arguments"]) == {"ticker": "IBM"}
    # tool_choice "none": nothing offered, nothing described
    assert "get_stock_price" not in render_messages(tok, convo[:1], [TOOL], "none",
                                                    tokenize=False)


def test_training_tokens_are_the_served_prompt_plus_the_answer(tok):
    prompt = [{"role": "user", "content": "IBM price?"}]
    served = render_messages(tok, prompt, [TOOL])
    example = data.encode_turn(tok, prompt, [{"role": "assistant", "content": "",
                                              "tool_calls": [CALL]}], 512, [TOOL])
    assert example.ids[:len(served)] == served
    answer = tok.decode([t for t, lab in zip(example.ids, example.labels) if lab != data.IGNORE])
    assert parse_tool_calls(answer)[0]["function"]["name"] == "get_stock_price"


def test_a_template_with_tool_support_receives_tools(tok):
    native = type(tok).from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    native.chat_template = ("{% for t in tools %}TOOL:{{ t.function.name }}\n{% endfor %}"
                            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    text = render_messages(native, [{"role": "user", "content": "hi"}], [TOOL], tokenize=False)
    assert text.startswith("TOOL:get_stock_price") and "You can call" not in text
