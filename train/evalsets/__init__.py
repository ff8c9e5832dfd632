"""The evaluation sets shipped with the project (JSON lines, one item per line), in two groups
kept in separate files:

Tuning sets, which chose the demo's training settings and gate margins; no result is reported on
them:
- `tools_heldout`: the tool-call task with the workload's own system prompt and templates, on slot
  values the workload never uses (`train.tasks.items(60, seed=1000, heldout=True)`);
- `regression`: short general questions.

Held-out sets, disjoint by construction from the workload, the training questions and the tuning
sets (`train.evalsets.build`; a test checks):
- `tools_api_gate` / `tools_api_report`: tool calls as an app makes them, the tools passed as the
  API's `tools=` schemas with no system prompt, new wordings and values, two tools the workload
  never offers; scored by exact match of the parsed `tool_calls`;
- `general_gate` / `general_report`: a general-ability suite with no template of the training
  questions, scored by whole words or exactly.
The eval gate decides on the `*_gate` sets; before → after results are reported on the `*_report`
sets, so a reported number is not the one a candidate was selected by.

Item: {"id", "messages", "check", "answer"} (+ "tools" for API tool calls, "wrong" for options that
must not appear). Decontamination uses the user turns of every item.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.exceptions import EvalError

HERE = Path(__file__).parent
TUNING = ("tools_heldout", "regression")
GATE = ("tools_api_gate", "general_gate")
REPORT = ("tools_api_report", "general_report")
NAMES = (*TUNING, *GATE, *REPORT)


def load(name: str) -> list[dict]:
    if name not in NAMES:
        raise EvalError(f"no evaluation set {name!r}; there are {', '.join(NAMES)}")
    with open(HERE / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def decontamination_texts() -> list[str]:
    """The user turns of every shipped item: what no training row may contain."""
    return [m["content"] for name in NAMES for item in load(name)
            for m in item["messages"] if m["role"] == "user"]
