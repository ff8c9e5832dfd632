"""The scripted workload of the demo: apps and contributors talking to the swarm through the
official `openai` SDK, and the held-out evaluation run through the swarm.

- apps ask general questions and a tool call through `tools=` (apps never contribute traces);
- contributors with consent grants send tool-call tasks and plain questions (`train.tasks`), some
  through the API's `tools=` (the trace keeps the request's tools) and some with the tools
  described in a system prompt the way the gateway renders `tools=` for this model; a
  program checks every answer and the contributor sends feedback: a good rating, or a low one with
  the correct call or reply as a correction. One contributor pastes PII and a secret into a
  request; one re-sends a few tasks; one contributor has no grant (nothing of theirs is stored).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

APP_QUESTIONS = ["What is the capital of France? Answer in one sentence.",
                 "Name three primary colors."]
APP_TOOL_QUESTION = "Weather for Paris in celsius?"
"""An app's request with the API's `tools=` (apps never contribute traces)."""
SENSITIVE = ("Set a timer for 12 minutes for the tea. By the way my email is "
             "jane.roe@example.org and my key is sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY")


@dataclass
class Stats:
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    traversals: int = 0
    drafted: int = 0
    accepted: int = 0
    traces: list[str] = field(default_factory=list)

    def add(self, response, seconds: float) -> dict:
        ext = response.model_extra.get("shoal", {})
        self.requests += 1
        self.tokens += response.usage.completion_tokens
        self.seconds += seconds
        self.traversals += ext.get("traversals", 0)
        self.drafted += ext.get("drafted", 0)
        self.accepted += ext.get("accepted", 0)
        if ext.get("request_id"):
            self.traces.append(ext["request_id"])
        return ext

    def as_dict(self) -> dict:
        return {"requests": self.requests, "completion_tokens": self.tokens,
                "tok_s_per_stream": round(self.tokens / self.seconds, 2) if self.seconds else None,
                "tokens_per_traversal": round(self.tokens / self.traversals, 2)
                if self.traversals else None,
                "drafted": self.drafted, "accepted": self.accepted,
                "traces_returned": len(self.traces)}


def chat(base_url: str, key: str, model: str, messages: list[dict], max_tokens: int,
         stats: Stats | None = None, tools: list[dict] | None = None):
    from openai import OpenAI

    api = OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=2, timeout=300)
    t0 = time.perf_counter()
    extra = {"tools": tools} if tools else {}
    r = api.chat.completions.create(model=model, messages=messages, temperature=0,
                                    max_tokens=max_tokens, **extra)
    if stats is not None:
        stats.add(r, time.perf_counter() - t0)
    return r


def feedback(base_url: str, key: str, request_id: str, **body) -> None:
    r = httpx.post(f"{base_url}/v1/feedback", json={"request_id": request_id, **body},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()


def correct_reply(item: dict) -> str:
    """What a contributor sends as the correction of a wrong answer to `item`."""
    from train.tasks import answer_text, tool_call_text

    if "reply" in item:
        return item["reply"]
    return tool_call_text(item["answer"]) if item["check"] == "tool_calls" \
        else answer_text(item["answer"])


def score_message(item: dict, message) -> bool:
    """Score a served answer: the parsed `tool_calls` for an item sent with `tools=`, else the
    text (a tool call written as text counts for a system-prompt item)."""
    from train.evaluate import score
    from train.tasks import match_call

    if item.get("tools"):
        calls = message.tool_calls or []
        if len(calls) != 1:
            return False
        try:
            args = json.loads(calls[0].function.arguments)
        except ValueError:
            return False
        return match_call({"name": calls[0].function.name, "arguments": args}, item["answer"])
    return score(item, message.content or "")


def run_workload(base_url: str, model: str, keys: dict[str, str], tasks: list[dict], *,
                 general: list[dict] = (), concurrency: int = 8, max_tokens: int = 40,
                 resend: int = 3, app_tools: bool = True, on_progress=None) -> dict:
    """Apps, contributors with feedback, an opted-out user; returns counts and speed.

    `tasks` are tool-call items, `general` plain questions; both are checked by the program the
    evaluation uses and get the same feedback. `app_tools`: an app also sends a `tools=` request
    (its prompt holds the three tool schemas)."""
    from train.tasks import tool_schemas

    stats = Stats()
    for q in APP_QUESTIONS:
        chat(base_url, keys["app"], model, [{"role": "user", "content": q}], max_tokens, stats)
    if app_tools:  # an app's tools=; apps' traces are not kept
        chat(base_url, keys["app"], model, [{"role": "user", "content": APP_TOOL_QUESTION}],
             max_tokens, stats, tools=tool_schemas())
    chat(base_url, keys["optout"], model, [{"role": "user", "content": APP_QUESTIONS[0]}],
         max_tokens, stats)
    chat(base_url, keys["alice"], model, [{"role": "user", "content": SENSITIVE}], max_tokens,
         stats)
    who = ["alice", "bob"]
    jobs = [(who[i % 2], t) for i, t in enumerate([*tasks, *general])]
    jobs += [("bob", t) for t in tasks[:resend]]  # the same task sent again: dedup drops it
    outcome = {"correct": 0, "corrected": 0, "done": 0, "general": len(general),
               "general_correct": 0}

    def one(job):
        person, task = job
        r = chat(base_url, keys[person], model, task["messages"], max_tokens, stats,
                 tools=task.get("tools"))
        trace = r.model_extra["shoal"].get("request_id")
        ok = score_message(task, r.choices[0].message)
        if trace:
            if ok:
                feedback(base_url, keys[person], trace, rating=5)
            else:
                feedback(base_url, keys[person], trace, rating=1, correction=correct_reply(task))
        outcome["correct" if ok else "corrected"] += 1
        outcome["general_correct"] += ok and not task["check"].startswith("tool_call")
        outcome["done"] += 1
        if on_progress:
            on_progress(outcome["done"], len(jobs))

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs))
    return {**stats.as_dict(), **outcome, "tasks": len(jobs)}


def swarm_eval(base_url: str, key: str, model: str, items: list[dict], *, concurrency: int = 8,
               max_tokens: int = 40) -> dict:
    """Score evaluation items answered by the swarm (an app key: nothing is stored); an item with
    `tools` is sent with `tools=` and scored on the `tool_calls` the API returns. Accuracy comes
    with its 95 % Wilson interval and each item's outcome (for a paired before → after test)."""
    from train.stats import wilson

    stats = Stats()

    def one(item):
        r = chat(base_url, key, model, item["messages"], max_tokens, stats,
                 tools=item.get("tools"))
        return score_message(item, r.choices[0].message), r.model_extra["shoal"]["version"]

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, items))
    versions = sorted({v for _, v in results})
    passed = sum(ok for ok, _ in results)
    return {"accuracy": passed / len(items), "n": len(items),
            "ci95": [round(x, 4) for x in wilson(passed, len(items))],
            "outcomes": {it["id"]: ok for it, (ok, _) in zip(items, results)},
            "versions": versions, **stats.as_dict()}
