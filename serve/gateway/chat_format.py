"""Between OpenAI's chat format and token ids: messages (tool calls and tool results included)
through the model's chat template, tool calls parsed back out of the completion, and the
incremental detokenizer that streams only final text.

Everything here is plain CPU work on the tokenizer; the API runs it in worker threads.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from serve.exceptions import ApiError

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
TOOLS_PROMPT = (
    "You can call these functions. To call one, answer only with\n"
    "<tool_call>{{\"name\": <function name>, \"arguments\": <JSON object>}}</tool_call>\n"
    "Functions:\n{tools}")


def render_chat(tokenizer: Any, body: Any) -> list[int]:
    """Messages (tool calls and tool results included) through the model's chat template."""
    messages: list[dict[str, Any]] = []
    for m in body.messages:
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                               "content": m.text()}
        if m.tool_calls:
            msg["tool_calls"] = [{"type": "function", "id": c.id, "function": {
                "name": c.function.name, "arguments": c.function.parsed_arguments()}}
                for c in m.tool_calls]
            if not msg["content"]:
                msg["content"] = "".join(
                    "<tool_call>" + json.dumps({"name": c.function.name,
                                                "arguments": c.function.parsed_arguments()})
                    + "</tool_call>" for c in m.tool_calls)
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    tools = body.tools if body.tool_choice != "none" else None
    template = tokenizer.chat_template or ""
    if tools and "tools" not in template:  # the template cannot render tools: describe them
        described = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + described}
        else:
            messages.insert(0, {"role": "system", "content": described})
        tools = None
    try:
        encoded = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                tokenize=True, return_dict=True)
    except Exception as exc:  # a template that rejects this conversation
        raise ApiError(400, f"chat template rejected the messages: {exc}",
                       param="messages") from None
    return list(encoded["input_ids"])


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    calls = []
    for raw in TOOL_CALL_RE.findall(text):
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
                "name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}})
    return calls


class TextStream:
    """Incremental detokenization with stop strings: emits only text that is final.

    Each token decodes a short window (the tokens since the last complete character, plus a few
    before for context), so a long completion costs the same per token as a short one."""

    CONTEXT = 4
    """Tokens decoded before the new ones, so tokenizers that strip a leading space of a word
    decode the new text as it reads in context."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False
        self._prefix = 0  # window start
        self._read = 0  # tokens whose text is in self.text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        window = self._decode(self.ids[self._prefix:])
        if not window.endswith("\ufffd") and len(window) >= len(before):  # complete characters
            self.text += window[len(before):]
            self._read = len(self.ids)
            self._prefix = max(0, self._read - self.CONTEXT)
        for s in self.stops:
            at = self.text.find(s)
            if at != -1:
                self.text, self.stopped = self.text[:at], True
        if self.stopped:
            return self.flush()
        hold = max((len(s) - 1 for s in self.stops), default=0)
        safe = len(self.text) - hold
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:safe], safe
        return delta

    def flush(self) -> str:
        if not self.stopped and self._read < len(self.ids):  # an incomplete character at the end
            before = self._decode(self.ids[self._prefix:self._read])
            self.text += self._decode(self.ids[self._prefix:])[len(before):]
            self._read = len(self.ids)
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta
