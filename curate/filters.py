"""Quality filters. Each record either passes or is dropped by the first filter it fails; the
counters name the filter, so a data card can say how many records each one removed.

Filters, in order: empty answer, too long, refused, repetitive, broken tool call (arguments that are
not JSON, no function name), failed tool call (the answer builds on a tool result that reported an
error), low rating (only for sets that learn from the answer itself: SFT and distillation).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from curate.config import FilterConfig
from curate.records import Record

REFUSAL = re.compile(r"^\s*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i cannot|i can'?t|"
                     r"i am unable|i'?m unable|as an ai\b|i won'?t be able)", re.IGNORECASE)
_WORD = re.compile(r"\w+")
FILTERS = ("empty", "too_long", "refused", "repetitive", "broken_tool_call", "failed_tool_call",
           "low_rating")


def repetition(text: str) -> float:
    """Share of word 3-grams that repeat an earlier 3-gram (0 = none, → 1 = a loop)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(grams) < 10:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _broken(call: dict) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not function.get("name"):
        return True
    try:
        json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        return True
    return False


def _failed(record: Record) -> bool:
    last = record.messages[-1] if record.messages else {}
    if last.get("role") != "tool":
        return False
    content = str(last.get("content") or "").strip()
    if content.startswith(("Error", "Traceback", "error:")):
        return True
    try:
        body = json.loads(content)
    except json.JSONDecodeError:
        return False
    return isinstance(body, dict) and bool(body.get("error"))


def reason(record: Record, config: FilterConfig, *, check_rating: bool = True) -> str | None:
    """The first filter `record` fails, or None when it passes."""
    answer = record.completion
    if len(answer.strip()) < config.min_completion_chars and not record.tool_calls:
        return "empty"
    if len(record.prompt_text()) + len(answer) > config.max_chars:
        return "too_long"
    if REFUSAL.match(answer):
        return "refused"
    if repetition(answer) > config.max_repetition:
        return "repetitive"
    if any(_broken(c) for c in record.tool_calls):
        return "broken_tool_call"
    if _failed(record):
        return "failed_tool_call"
    if check_rating and record.rating is not None and record.rating < config.min_rating:
        return "low_rating"
    return None


def quality(records: Sequence[Record], config: FilterConfig, *,
            check_rating: bool = True) -> tuple[list[Record], dict]:
    dropped: Counter = Counter()
    kept = []
    for r in records:
        why = reason(r, config, check_rating=check_rating)
        if why is None:
            kept.append(r)
        else:
            dropped[why] += 1
    return kept, {"in": len(records), "kept": len(kept),
                  "dropped": {name: dropped.get(name, 0) for name in FILTERS}}
