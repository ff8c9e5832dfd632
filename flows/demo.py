"""`make demo`: the project's main job on embedded defaults.

1. keys, a registry, and SmolLM2-135M-Instruct imported, signed and promoted as the genesis
   version (skipped when done);
2. a local swarm: tracker, 3 nodes of 10 layers each, and the gateway, which admits each node only
   after a live-weight proof and a fingerprint, and keeps consented traces;
3. a contributor with a consent grant and an app talk to it through the official `openai` SDK;
4. a summary: answers, routes, tokens per traversal, proofs passed, traces stored.

It grows into the whole flywheel: curation, DeepSpeed training, the eval gate, promotion and rollout.
"""

from __future__ import annotations

import json
import time

from flows.config import ShoalConfig
from flows.genesis import DEFAULT_NAME, ensure_genesis

QUESTIONS = [
    ("app", "What is the capital of France? Answer in one sentence."),
    ("contributor", 'Return exactly this JSON: {"tool": "get_weather", "arguments": '
                    '{"city": "Paris", "unit": "celsius"}}'),
]


def run_demo(cfg: ShoalConfig, *, source=None, name: str = DEFAULT_NAME) -> dict:
    """Run the demo; `source`/`name` replace the default model (tests use a tiny one)."""
    import httpx
    from openai import OpenAI
    from rich.console import Console
    from rich.table import Table

    from registry.manifest import short_id
    from serve.up import LocalSwarm, SwarmSpec

    console = Console()
    t0 = time.perf_counter()
    with console.status("keys, registry and the signed genesis model…"):
        genesis = ensure_genesis(cfg, say=lambda m: console.log(m), source=source, name=name)
    client = cfg.client()
    record = client.channel("production")
    manifest = client.manifest(record.version)
    console.log(f"genesis {short_id(genesis.version_id)} "
                f"({'imported' if genesis.imported else 'already imported'}); production "
                f"#{record.sequence} -> {short_id(record.version)} (signatures, snapshot checked)")

    store = cfg.trace_store()
    keys, accounts = {}, {}
    for role in ("app", "contributor"):
        account = accounts[role] = store.create_account(role, f"demo-{role}")
        keys[role] = store.create_key(account.account_id)[1]
        if role == "contributor":
            store.create_grant(account, ["sft", "dpo"], days=30)
    swarm = LocalSwarm(SwarmSpec(model="production", nodes=3, traces=True), cfg.home,
                       manifest.num_layers)
    with console.status("starting 3 nodes and the gateway; verifying every node…"):
        swarm.start(wait_s=600)
    rows, summary = [], {"version": record.version, "answers": []}
    try:
        console.log(f"swarm ready at {swarm.base_url}/v1")
        for role, question in QUESTIONS:
            api = OpenAI(base_url=f"{swarm.base_url}/v1", api_key=keys[role], max_retries=0)
            started = time.perf_counter()
            r = api.chat.completions.create(model=manifest.name, temperature=0, max_tokens=48,
                                            messages=[{"role": "user", "content": question}])
            ext = r.model_extra["shoal"]
            seconds = time.perf_counter() - started
            rows.append((role, question, r.choices[0].message.content, ext, seconds,
                         r.usage.completion_tokens))
            summary["answers"].append({"role": role, "question": question,
                                       "answer": r.choices[0].message.content,
                                       "tok_s": r.usage.completion_tokens / seconds, **ext})
        verifier = httpx.get(f"{swarm.base_url}/verifier", timeout=10).json()
    finally:
        swarm.stop()
    stored = [r for a in accounts.values() for r in store.query(contributor_id=a.account_id)]
    for role, question, answer, *_ in rows:
        console.print(f"[bold]{role}:[/bold] {question}\n[bold]swarm:[/bold] {answer}\n")
    table = Table(title="shoal demo")
    for col in ("who", "route (node ids)", "tokens/traversal", "tok/s", "trace"):
        table.add_column(col)
    for role, _, _, ext, seconds, tokens in rows:
        table.add_row(role, " → ".join(n[:6] for n in ext["route"]),
                      f"{ext['tokens_per_traversal']:.2f}", f"{tokens / seconds:.1f}",
                      (ext["trace_id"] or "not stored")[:12])
    console.print(table)
    passed = sum(n["passed"] for n in verifier["nodes"].values())
    console.print(f"nodes admitted: {sum(n['status'] == 'trusted' for n in verifier['nodes'].values())}"
                  f"/{len(verifier['nodes'])}, checks passed {passed}, failures "
                  f"{verifier['failures']}; traces stored: {len(stored)} (only the opted-in "
                  f"contributor's)")
    summary.update(verifier={"checks_passed": passed, "failures": verifier["failures"]},
                   traces_stored=len(stored), seconds=time.perf_counter() - t0)
    out = cfg.home / "run" / "demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    console.log(f"done in {summary['seconds']:.1f} s; summary in {out}")
    return summary
