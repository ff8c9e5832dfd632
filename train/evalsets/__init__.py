"""The evaluation sets shipped with the project (JSON lines, one item per line).

- `tools_heldout.jsonl`: the tool-call task on slot values the workload never uses
  (`train.tasks.items(60, seed=1000, heldout=True)`), scored by exact match of the call;
- `regression.jsonl`: a fixed suite of short general questions a program can score
  (`contains`: the answer must contain one of the strings; `json`: the answer must parse as JSON).

Item: {"id", "messages", "check", "answer"}. Decontamination uses the user turns of every item.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.exceptions import EvalError

HERE = Path(__file__).parent
NAMES = ("tools_heldout", "regression")


def load(name: str) -> list[dict]:
    if name not in NAMES:
        raise EvalError(f"no evaluation set {name!r}; there are {', '.join(NAMES)}")
    with open(HERE / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def decontamination_texts() -> list[str]:
    """The user turns of every shipped item: what no training row may contain."""
    return [m["content"] for name in NAMES for item in load(name)
            for m in item["messages"] if m["role"] == "user"]
