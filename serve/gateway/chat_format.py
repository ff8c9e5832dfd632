"""Between OpenAI's chat format and token ids: messages (tool calls and tool results included)
through the model's chat template, tool calls parsed back out of the completion, and the
incremental detokenizer that streams only final text.

Everything here is plain CPU work on the tokenizer; the API runs it in worker threads.
"""

from __future__ import annotations

import json
from typing import Any

from curate.tool_calls import TOOL_CALL_RE, parse_tool_calls  # noqa: F401 (re-exported)
from serve.exceptions import ApiError
TOOLS_PROMPT = (
    "You can call these functions. To call one, answer only with\n"
    "<tool_call>{{\"name\": <function name>, \"arguments\": <JSON object>}}</tool_call>\n"
    "Functions:\n{tools}")


def render_chat(tokenizer: Any, body: Any) -> list[int]:
    """A chat request's messages (tool calls and tool results included) and its `tools` through
    the model's chat template; a conversation the template rejects is a 400."""
    messages: list[dict[str, Any]] = []
    for m in body.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            msg["tool_calls"] = [{"type": "function", "id": c.id, "function": {
                "name": c.function.name, "arguments": c.function.parsed_arguments()}}
                for c in m.tool_calls]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    try:
        return render_messages(tokenizer, messages, body.tools, body.tool_choice)
    except Exception as exc:  # a template that rejects this conversation
        raise ApiError(400, f"chat template rejected the messages: {exc}",
                       param="messages") from None


def template_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                      native: bool) -> list[dict[str, Any]]:
    """OpenAI-shaped messages as a chat template takes them: `developer` read as `system`, tool
    calls' arguments as objects, and, for a template without tool support (`native` False),
    the shoal tool format: the tools described in the system message (`TOOLS_PROMPT`) and an
    assistant's calls written as `<tool_call>{"name": …, "arguments": …}</tool_call>`."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        msg: dict[str, Any] = {"role": "system" if m["role"] == "developer" else m["role"],
                               "content": content}
        calls = [_call_object(c) for c in m.get("tool_calls") or ()]
        if calls:
            msg["tool_calls"] = [{"type": "function", "id": c.get("id", ""),
                                  "function": {"name": name, "arguments": args}}
                                 for c, (name, args) in zip(m["tool_calls"], calls)]
            if not native:
                written = "".join("<tool_call>" + json.dumps({"name": name, "arguments": args})
                                  + "</tool_call>" for name, args in calls)
                msg["content"] = f"{content}\n{written}" if content else written
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    if tools and not native:
        described = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def offered_tools(tools: list[dict[str, Any]] | None, tool_choice: Any = None
                  ) -> list[dict[str, Any]] | None:
    """The tools a request offers the model: none with `tool_choice: "none"`, only the named one
    with `{"type": "function", "function": {"name": …}}`."""
    if not tools or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        return [t for t in tools if t.get("function", {}).get("name") == name] or None
    return list(tools)


def render_messages(tokenizer: Any, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None, tool_choice: Any = None, *,
                    add_generation_prompt: bool = True, tokenize: bool = True
                    ) -> list[int] | str:
    """The one rendering of a conversation with tools, shared by serving and training: the
    template's own tool support when it has one (`tools=` to `apply_chat_template`), else the
    shoal tool format (`template_messages`). Token ids, or the text with `tokenize=False`."""
    offered = offered_tools(tools, tool_choice)
    native = "tools" in (tokenizer.chat_template or "")
    rendered = template_messages(messages, offered, native)
    kwargs = {"tools": offered} if native and offered else {}
    if not tokenize:
        return tokenizer.apply_chat_template(rendered, add_generation_prompt=add_generation_prompt,
                                             tokenize=False, **kwargs)
    encoded = tokenizer.apply_chat_template(rendered, add_generation_prompt=add_generation_prompt,
                                            tokenize=True, return_dict=True, **kwargs)
    return list(encoded["input_ids"])


def _call_object(call: dict[str, Any]) -> tuple[str, Any]:
    """(name, arguments as an object) of an OpenAI tool call, whose arguments may be a JSON
    string."""
    function = call.get("function", call)
    args = function.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # kept as the text it was
    return str(function.get("name", "")), args


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
