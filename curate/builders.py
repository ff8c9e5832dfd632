"""Set builders in TRL formats, each drawing only on records whose grant allows it.

- SFT (`messages`; scope `sft`): the conversation with the served answer, or the contributor's
  correction when there is one.
- DPO (`prompt` / `chosen` / `rejected`, conversational; scope `dpo`): explicit chosen/rejected
  feedback, a correction against the original answer, and two rated answers to the same prompt.
- Distillation (`messages`; scope `distill`): prompts with the served model's own outputs, the
  targets for a draft model that should agree with that model.

Assistant turns are in TRL's tool format: the served answer's parsed `tool_calls`, and a correction
written as `<tool_call>{…}</tool_call>` (the gateway's tool format) turned into `tool_calls` too, so
the training renderer (`train.data`, the gateway's own `render_messages`) writes them exactly as
serving does. Splits are by agent run (`trace_id`): a conversation lands wholly in `train` or
wholly in `eval`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from curate.config import SplitConfig
from curate.dedup import normalize
from curate.records import Record
from curate.tool_calls import TOOL_CALL_RE, parse_tool_calls

KINDS = ("sft", "dpo", "distill")


def in_eval(trace_id: str, split: SplitConfig) -> bool:
    h = hashlib.sha256(f"{split.seed}:{trace_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < split.eval_fraction


def _assistant(content: str, tool_calls: Sequence[dict] = ()) -> dict:
    """An assistant turn; with tool calls, its content is the text outside the `<tool_call>`
    blocks the calls were parsed from (the renderer writes the calls back itself)."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["content"] = TOOL_CALL_RE.sub("", content).strip()
        message["tool_calls"] = [dict(c) for c in tool_calls]
    return message


def _correction(record: Record, text: str) -> dict:
    """A correction as an assistant turn: tool calls when it is only `<tool_call>` blocks (ids
    derived from the request, so the same traces give the same rows), else text."""
    calls = parse_tool_calls(text)
    if not calls or TOOL_CALL_RE.sub("", text).strip():
        return _assistant(text)
    for i, call in enumerate(calls):
        call["id"] = f"call_{record.request_id[:16]}_{i}"
    return _assistant("", calls)


def _prompt(record: Record) -> list[dict]:
    return [dict(m) for m in record.messages]


def _row(record: Record, **fields) -> dict:
    """A row with its provenance, and the request's `tools` (TRL's tool column) when it had any."""
    tools = {"tools": [dict(t) for t in record.tools]} if record.tools else {}
    return {**fields, **tools, "request_id": record.request_id, "trace_id": record.trace_id}


def sft(records: Sequence[Record]) -> tuple[list[dict], dict]:
    rows, corrected, out_of_scope = [], 0, 0
    for r in records:
        if "sft" not in r.scopes:
            out_of_scope += 1
            continue
        if r.corrections:
            corrected += 1
            answer = _correction(r, r.corrections[-1])
        else:
            answer = _assistant(r.completion, r.tool_calls)
        rows.append(_row(r, messages=_prompt(r) + [answer]))
    return rows, {"rows": len(rows), "from_corrections": corrected, "out_of_scope": out_of_scope}


def dpo(records: Sequence[Record]) -> tuple[list[dict], dict]:
    rows, sources, out_of_scope = [], {"feedback_pair": 0, "correction": 0, "rating": 0}, 0
    by_prompt: dict[str, list[Record]] = {}
    for r in records:
        if "dpo" not in r.scopes:
            out_of_scope += 1
            continue
        for chosen, rejected in r.pairs:
            rows.append(_row(r, prompt=_prompt(r), chosen=[_assistant(chosen)],
                             rejected=[_assistant(rejected)]))
            sources["feedback_pair"] += 1
        for correction in r.corrections[-1:]:
            if normalize(correction) != normalize(r.completion):
                rows.append(_row(r, prompt=_prompt(r), chosen=[_correction(r, correction)],
                                 rejected=[_assistant(r.completion, r.tool_calls)]))
                sources["correction"] += 1
        if r.rating is not None:
            by_prompt.setdefault(normalize(r.prompt_text()), []).append(r)
    for group in by_prompt.values():
        best = max(group, key=lambda r: r.rating)
        worst = min(group, key=lambda r: r.rating)
        if best.rating > worst.rating and normalize(best.completion) != normalize(worst.completion):
            rows.append(_row(best, prompt=_prompt(best),
                             chosen=[_assistant(best.completion, best.tool_calls)],
                             rejected=[_assistant(worst.completion, worst.tool_calls)]))
            sources["rating"] += 1
    return rows, {"rows": len(rows), "sources": sources, "out_of_scope": out_of_scope}


def distill(records: Sequence[Record]) -> tuple[list[dict], dict]:
    rows, versions, out_of_scope = [], {}, 0
    for r in records:
        if "distill" not in r.scopes:
            out_of_scope += 1
            continue
        rows.append(_row(r, messages=_prompt(r) + [_assistant(r.completion, r.tool_calls)],
                         model_version=r.model_version))
        versions[r.model_version] = versions.get(r.model_version, 0) + 1
    return rows, {"rows": len(rows), "model_versions": versions, "out_of_scope": out_of_scope}


def split(rows: Sequence[dict], config: SplitConfig) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    for row in rows:
        out["eval" if in_eval(row["trace_id"], config) else "train"].append(row)
    return out
