"""The speculative-decoding part of `shoal bench swarm`.

Two workloads ship with the project (`serve/workloads/`): *agentic* (tool-call JSON, code edits,
repeated structure) and *open chat*. For each one-way delay, each workload and each drafter
(none, prompt lookup, suffix index, draft model when given), the workload's prompts are generated
greedily through the same node processes, and the naive mode without a drafter runs beside them.
Reported per cell: tokens per traversal, decode tok/s, and the fraction of the latency limit

    limit = tau / ((n + 1) * delay + c)

where tau is the measured tokens per traversal, n the number of hops and c the measured compute time
per traversal of that drafter at zero delay. The suffix index is warmed with one pass over the
workload first (it learns from what the swarm served).
"""

from __future__ import annotations

import json
import time
from importlib import resources

WORKLOADS = ("agentic", "open_chat")


def load_workload(name: str) -> list[list[dict]]:
    text = resources.files("serve").joinpath(f"workloads/{name}.jsonl").read_text()
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


async def run_workload(engine, tokenizer, prompts: list[list[int]], drafter: str,
                       tokens: int) -> dict:
    from serve.drafters.base import DraftScope
    from serve.gateway.engine import Outcome
    from serve.sampling import SamplingParams

    scope = DraftScope(tenant="bench", learn=True)  # one tenant: the suffix index learns its text

    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    produced = traversals = 0
    decode_s = 0.0
    for prompt in prompts:
        outcome = Outcome()
        t0 = time.perf_counter()
        first = None
        async for _ in engine.generate(prompt, params, outcome, drafter=drafter,
                                       scope=scope):
            first = first or time.perf_counter()
        decode_s += time.perf_counter() - (first or t0)
        produced += max(0, outcome.completion_tokens - 1)
        traversals += max(0, outcome.traversals - 1)  # the prefill is not a decode traversal
    return {"tokens": produced, "traversals": traversals,
            "tokens_per_traversal": produced / max(1, traversals),
            "decode_tok_s": produced / max(1e-9, decode_s),
            "s_per_traversal": decode_s / max(1, traversals)}


async def sweep_speculation(swarm, pipeline, engine, head, delays: list[float],
                            drafters: list[str], tokens: int, hops: int) -> dict:
    import asyncio

    prompts = {w: [head.tokenizer.apply_chat_template(m, add_generation_prompt=True,
                                                      tokenize=True, return_dict=True)
                   ["input_ids"] for m in load_workload(w)] for w in WORKLOADS}
    if "suffix" in drafters:  # learn from one pass of served outputs
        swarm.set_delay(0)
        for w in WORKLOADS:
            await run_workload(engine, head.tokenizer, prompts[w], "suffix", tokens)
    results: dict = {}
    compute: dict = {}
    for delay in delays:
        swarm.set_delay(delay)
        await asyncio.sleep(0.2)
        for w in WORKLOADS:
            row = results.setdefault(w, {}).setdefault(f"{delay:g}", {})
            for mode, drafter in [("chain", d) for d in drafters] + [("naive", "off")]:
                pipeline.chain = mode == "chain"
                cell = await run_workload(engine, head.tokenizer, prompts[w], drafter, tokens)
                key = drafter if mode == "chain" else "naive"
                if delay == 0:
                    compute[(w, key)] = cell["s_per_traversal"]
                c = compute.get((w, key), cell["s_per_traversal"])
                hop_count = hops + 1 if mode == "chain" else 2 * hops
                limit = cell["tokens_per_traversal"] / (hop_count * delay / 1000 + c)
                cell["latency_limit_tok_s"] = limit
                cell["fraction_of_limit"] = cell["decode_tok_s"] / limit
                row[key] = cell
    pipeline.chain = True
    return results


def summarize_speculation(results: dict) -> dict:
    out = {}
    for w, by_delay in results.items():
        for delay, row in by_delay.items():
            best = max((d for d in row if d not in ("naive", "off")),
                       key=lambda d: row[d]["decode_tok_s"], default=None)
            out[f"{w}@{delay}ms"] = {
                "best_drafter": best,
                "best_over_naive": row[best]["decode_tok_s"] / row["naive"]["decode_tok_s"]
                if best else None,
                "best_over_no_drafter": row[best]["decode_tok_s"] / row["off"]["decode_tok_s"]
                if best else None,
                "worst_drafter_over_no_drafter": min(
                    row[d]["decode_tok_s"] for d in row if d not in ("naive", "off"))
                / row["off"]["decode_tok_s"] if best else None}
    return out
