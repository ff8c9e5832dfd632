"""The speculative-decoding part of `shoal bench swarm`.

Two workloads ship with the project (`serve/workloads/`): *agentic* (tool-call JSON, code edits,
repeated structure) and *open chat*. Each comes in two files kept apart: `NAME.tune.jsonl`, the
only prompts anything may learn from, tune on or warm with (the suffix index's warm-up pass reads
it), and `NAME.jsonl`, the held-out prompts every number is measured on (no prompt in both; the
report names the files and the check). For each one-way delay, each workload and each drafter
(none, prompt lookup, suffix index, draft model when given), the held-out prompts are generated
greedily through the same node processes, and the naive mode without a drafter runs beside them.
Reported per cell: tokens per traversal, decode tok/s, and the fraction of the latency limit

    limit = tau / ((n + 1) * delay + c)

where tau is the measured tokens per traversal, n the number of hops and c the measured compute time
per traversal of that drafter at zero delay. The suffix index is warmed with one pass over the
tuning prompts first (it learns from what the swarm served them), never over the measured ones.
"""

from __future__ import annotations

import json
import time
from importlib import resources

WORKLOADS = ("agentic", "open_chat")


SPLITS = {"measure": "{}.jsonl", "tune": "{}.tune.jsonl"}
"""File of each split of a workload: held-out prompts to measure on, and prompts to warm or tune
with."""


def load_workload(name: str, split: str = "measure") -> list[list[dict]]:
    """The conversations of one split of a workload (`SPLITS`)."""
    text = resources.files("serve").joinpath("workloads", SPLITS[split].format(name)).read_text()
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def split_report() -> dict:
    """Which files were measured and which warmed or tuned, and that they share no prompt (the
    bench refuses to run when they do)."""
    out = {}
    for w in WORKLOADS:
        measure = [json.dumps(m, sort_keys=True) for m in load_workload(w)]
        tune = [json.dumps(m, sort_keys=True) for m in load_workload(w, "tune")]
        shared = set(measure) & set(tune)
        if shared:
            raise ValueError(f"workload {w}: {len(shared)} prompt(s) in both the measured and the "
                             "tuning split")
        out[w] = {"measured": f"serve/workloads/{SPLITS['measure'].format(w)}",
                  "measured_prompts": len(measure),
                  "warmed_or_tuned_on": f"serve/workloads/{SPLITS['tune'].format(w)}",
                  "tuning_prompts": len(tune), "shared_prompts": 0}
    return out


async def run_workload(engine, tokenizer, prompts: list[list[int]], drafter: str,
                       tokens: int, learn: bool = False) -> dict:
    """Generate each prompt greedily with `drafter`; with `learn`, the suffix index keeps what
    was served (only for the tuning split: a measured prompt never teaches a later cell)."""
    from serve.drafters.base import DraftScope
    from serve.gateway.engine import Outcome
    from serve.sampling import SamplingParams

    scope = DraftScope(tenant="bench", learn=learn)  # one tenant, drafting from what it learnt

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
                            drafters: list[str], tokens: int, hops: int,
                            prompts_per_workload: int | None = None) -> dict:
    import asyncio

    def ids(split: str) -> dict[str, list[list[int]]]:
        return {w: [head.tokenizer.apply_chat_template(m, add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)
                    ["input_ids"] for m in load_workload(w, split)] for w in WORKLOADS}

    results: dict = {"split": split_report()}
    prompts = {w: p[:prompts_per_workload] for w, p in ids("measure").items()}
    if "suffix" in drafters:  # learn from one pass of what the swarm serves the tuning prompts
        swarm.set_delay(0)
        for w, tuning in ids("tune").items():
            await run_workload(engine, head.tokenizer, tuning, "suffix", tokens, learn=True)
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
    out = {"split": results["split"]}
    for w, by_delay in results.items():
        if w == "split":
            continue
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
