"""The text form of a tool call, `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, and its
parser into OpenAI's `tool_calls`.

It is what the shoal chat format asks a model to write when its template has no tool support
(`serve/gateway/chat_format.py`), so three stages read it: serving parses completions with it,
curation parses contributors' corrections, evaluation scores answers. It lives here, at the
bottom of the stack, so that each of them can import it without reaching upwards.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Every well-formed `<tool_call>` block of `text` as an OpenAI tool call (a fresh id each);
    blocks that are not a JSON object with a string `name` are skipped."""
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
