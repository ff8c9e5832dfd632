"""`Record`: one consented trace with its feedback, in the shape every curation stage works on.

Records are plain data (picklable, so a process or Dask worker can take a chunk). They know how to
list and rewrite their own text fields, so the scrubber never has to know the trace layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from curate.exceptions import RecordError


@dataclass(frozen=True)
class Record:
    request_id: str
    trace_id: str
    contributor_id: str
    scopes: tuple[str, ...]
    model_version: str
    messages: tuple[dict, ...]
    """The request's messages in OpenAI format (tool calls and tool results included)."""
    completion: str
    tool_calls: tuple[dict, ...] = ()
    tools: tuple[dict, ...] = ()
    """The tools the request offered the model (OpenAI `tools` schemas)."""
    rating: int | None = None
    """The contributor's latest rating, if any."""
    pairs: tuple[tuple[str, str], ...] = ()
    """(chosen, rejected) pairs the contributor gave for this prompt."""
    corrections: tuple[str, ...] = ()
    vector: tuple[float, ...] | None = None
    created_at: str = ""

    def prompt_text(self) -> str:
        return "\n".join(_content_text(m) for m in self.messages)

    def text(self) -> str:
        """Prompt and answer as one string: what dedup and decontamination compare.

        System messages are left out: apps send the same long system prompt with every request,
        and shared boilerplate must not make two different conversations look alike."""
        turns = "\n".join(_content_text(m) for m in self.messages if m.get("role") != "system")
        calls = " ".join(json.dumps(c, sort_keys=True) for c in self.tool_calls)
        return f"{turns}\n{self.completion}\n{calls}".strip()

    def map_text(self, fn: Callable[[str], str]) -> Record:
        """A copy with `fn` applied to every free-text field (messages, answer, tool calls, feedback)."""
        messages = tuple(_map_message(m, fn) for m in self.messages)
        calls = tuple(_map_call(c, fn) for c in self.tool_calls)
        return replace(self, messages=messages, completion=fn(self.completion), tool_calls=calls,
                       pairs=tuple((fn(c), fn(r)) for c, r in self.pairs),
                       corrections=tuple(fn(c) for c in self.corrections))


def _content_text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # OpenAI content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or []
    extra = " ".join(json.dumps(c.get("function", c), sort_keys=True) for c in calls)
    return f"{content} {extra}".strip()


def _map_message(message: dict, fn: Callable[[str], str]) -> dict:
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = fn(content)
    elif isinstance(content, list):
        out["content"] = [{**p, "text": fn(p["text"])} if isinstance(p, dict) and "text" in p else p
                          for p in content]
    if message.get("tool_calls"):
        out["tool_calls"] = [_map_call(c, fn) for c in message["tool_calls"]]
    return out


def _map_call(call: dict, fn: Callable[[str], str]) -> dict:
    out = dict(call)
    function = call.get("function")
    if isinstance(function, dict):
        out["function"] = {**function,
                           "arguments": fn(function.get("arguments") or "")}
    return out


def records_from_rows(traces: Iterable[dict], feedback: Iterable[dict]) -> list[Record]:
    """Join trace rows with their feedback rows (as the trace store returns them)."""
    by_request: dict[str, list[dict]] = {}
    for f in feedback:
        by_request.setdefault(f["request_id"], []).append(f)
    records = []
    for row in traces:
        rid = row.get("request_id", "?")
        try:
            messages = tuple(json.loads(row["messages_json"]))
            calls = tuple(json.loads(row.get("tool_calls_json") or "[]"))
            tools = tuple(json.loads(row.get("tools_json") or "[]"))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RecordError(f"trace {rid}: messages or tool calls are not valid JSON ({e})") from e
        fb = sorted(by_request.get(rid, []), key=lambda f: str(f.get("created_at", "")))
        ratings = [f["rating"] for f in fb if f.get("rating") is not None]
        vector = row.get("vector")
        if vector is not None and not any(vector):  # stored without an embedding
            vector = None
        created = row.get("created_at")
        records.append(Record(
            request_id=rid, trace_id=row.get("trace_id") or rid,
            contributor_id=row["contributor_id"], scopes=tuple(row.get("grant_scopes") or ()),
            model_version=row.get("model_version", ""), messages=messages,
            completion=row.get("completion") or "", tool_calls=calls, tools=tools,
            rating=ratings[-1] if ratings else None,
            pairs=tuple((f["chosen"], f["rejected"]) for f in fb if f.get("chosen")
                        and f.get("rejected")),
            corrections=tuple(f["correction"] for f in fb if f.get("correction")),
            vector=tuple(float(x) for x in vector) if vector is not None else None,
            created_at=created.isoformat() if isinstance(created, datetime) else str(created or "")))
    return records
