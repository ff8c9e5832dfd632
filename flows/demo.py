"""`make demo`: the whole flywheel on embedded defaults, from a fresh clone.

1. keys, a registry, and SmolLM2-135M-Instruct imported, signed and promoted as the genesis
   version (skipped when done);
2. a local swarm following `production`: tracker, 3 nodes of 10 layers each, the gateway (every
   node admitted only after a live-weight proof and a fingerprint; consented traces kept);
3. the held-out evaluation through the swarm (before): API tool calls sent with `tools=` and scored
   on the returned `tool_calls`, and the general suite (`tools_api_report`, `general_report`, sets
   no setting was tuned on); then the scripted workload through the `openai` SDK: apps,
   contributors with grants sending tool-call tasks and correcting wrong answers, one contributor
   without a grant;
4. curate (Prefect) → train (DeepSpeed, 2 processes) → evaluate → gate → staging; the demo then
   acts as the maintainer and signs the promotion to `production`; nodes and gateway roll it out;
5. the held-out evaluation through the swarm again, now on the new version (after), with 95 %
   intervals and an exact paired test of after against before on the same items;
6. a summary table, `$SHOAL_HOME/run/demo.json` and `demo.png`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, Field

from flows.config import ShoalConfig
from flows.genesis import DEFAULT_NAME, ensure_genesis


class DemoConfig(BaseModel):
    seed: int = 0
    """Seeds the contributors' tasks, the data split and training."""
    tasks: int = Field(80, ge=8)
    """Tool-call tasks the contributors send (before duplicates)."""
    general: int = Field(16, ge=0, le=32)
    """Plain questions the contributors also ask (no tools offered). Their checked and corrected
    answers go into training too, so the new version keeps answering plainly when no tools are
    offered (without them it starts quoting bare words as if replying to a tool prompt)."""
    api_tools: bool = True
    """Contributors describe the tools the way the gateway renders an app's `tools=` (what the
    held-out API set measures); False: the short bare-JSON system prompt of the tuning set (for a
    model whose context cannot hold the tool schemas, like the tests' 256-token one)."""
    report_sets: dict[str, str] = Field(default_factory=lambda: {
        "tools": "tools_api_report", "general": "general_report"})
    """The sets answered through the swarm before and after (`train.evalsets`), by role."""
    eval_items: int = Field(120, ge=1)
    """Items per reporting set answered through the swarm before and after (120: all)."""
    gate_limit: int | None = None
    """Items per evaluation set the gate scores (None: all 120)."""
    train: dict = Field(default_factory=lambda: {"max_steps": 16, "epochs": 3, "lr": 5e-5,
                                                 "micro_batch": 4, "max_len": 160})
    procs: int = Field(2, ge=1)
    gate: dict | None = None
    """The eval gate's tables (`train.gate.GateConfig`); None: the same default gate as
    `shoal flow train` (docs/training.md)."""
    concurrency: int = Field(8, ge=1)
    max_tokens: int = Field(40, ge=1)
    nodes: int = Field(3, ge=1)
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of agent runs the curate flow holds out (the gate's log-likelihood rows)."""


def run_demo(cfg: ShoalConfig, config: DemoConfig | None = None, *, source=None,
             name: str = DEFAULT_NAME) -> dict:
    """Run the flywheel; `source`/`name` replace the default model (tests use a tiny one)."""
    import httpx
    from rich.console import Console

    from flows.curation import run_curate
    from flows.genesis import ensure_keys
    from flows.training import improve
    from flows.workload import run_workload, swarm_eval
    from curate.config import CurateConfig, SplitConfig
    from registry.manifest import short_id
    from registry.publish import promote
    from serve.up import LocalSwarm, SwarmSpec
    from train.evalsets import load
    from train.records import EvalReport, Registered, RunRecord
    from train.stats import mcnemar
    from train.tasks import general_items, items, via_tools

    config = config or DemoConfig()
    console = Console()
    t_start = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(label: str, t0: float) -> None:
        phases[label] = round(time.perf_counter() - t0, 1)
        console.log(f"[green]✓[/green] {label} ({phases[label]:.0f} s)")

    t0 = time.perf_counter()
    with console.status("keys, registry and the signed genesis model…"):
        genesis = ensure_genesis(cfg, say=lambda m: console.log(m), source=source, name=name)
    client = cfg.client()
    record = client.channel("production")
    if record.version != genesis.version_id:  # an earlier run promoted its candidate
        promote(cfg.store(), genesis.version_id, "production", [ensure_keys(cfg)["promote"]],
                note="demo: start from genesis")
        record = client.channel("production")
    manifest = client.manifest(record.version)
    console.log(f"production #{record.sequence} → {short_id(record.version)} "
                f"(signatures, snapshot and expiry checked)")
    phase("genesis", t0)

    store = cfg.trace_store()
    keys, accounts = {}, {}
    for who, role, scopes in (("app", "app", None), ("alice", "contributor",
                                                     ["sft", "dpo", "distill", "eval"]),
                              ("bob", "contributor", ["sft", "dpo"]),
                              ("optout", "contributor", None),
                              ("maintainer", "maintainer", None)):
        account = accounts[who] = store.create_account(role, f"demo-{who}")
        keys[who] = store.create_key(account.account_id)[1]
        if scopes:
            store.create_grant(account, scopes, days=30)

    t0 = time.perf_counter()
    swarm = LocalSwarm(SwarmSpec(model="production", nodes=config.nodes, traces=True,
                                 watch="production", watch_poll_s=1.0), cfg.home,
                       manifest.num_layers)
    with console.status(f"starting {config.nodes} nodes and the gateway; verifying every node…"):
        swarm.start(wait_s=600)
    phase("swarm up", t0)
    report_sets = {k: load(name)[:config.eval_items] for k, name in config.report_sets.items()}
    summary: dict = {"seed": config.seed, "genesis": genesis.version_id, "config":
                     config.model_dump()}
    try:
        base = swarm.base_url
        t0 = time.perf_counter()
        with console.status("held-out evaluation through the swarm "
                            f"({sum(map(len, report_sets.values()))} items)…"):
            summary["eval_before"] = {
                k: swarm_eval(base, keys["app"], manifest.name, its,
                              concurrency=config.concurrency, max_tokens=config.max_tokens)
                for k, its in report_sets.items()}
        phase("eval before", t0)

        t0 = time.perf_counter()
        tasks = items(config.tasks, seed=config.seed, api=config.api_tools)
        if config.api_tools:  # half through `tools=`, half through a system prompt: apps do both
            tasks = [via_tools(t) if i % 2 == 0 else t for i, t in enumerate(tasks)]
        general = general_items(config.general, seed=config.seed)
        with console.status("workload: apps and contributors via the openai SDK…") as status:
            summary["workload"] = run_workload(
                base, manifest.name, keys, tasks, general=general, concurrency=config.concurrency,
                max_tokens=config.max_tokens, app_tools=config.api_tools,
                on_progress=lambda d, n: status.update(f"workload: {d}/{n} tasks answered…"))
        phase("workload", t0)
        summary["verifier"] = _verifier(httpx.get(  # the schedule is for maintainers only
            f"{base}/verifier", headers={"Authorization": f"Bearer {keys['maintainer']}"},
            timeout=10).json())

        t0 = time.perf_counter()
        with console.status("curate flow: scrub, dedup, filter, decontaminate, build sets…"):
            curated = run_curate(cfg, CurateConfig(split=SplitConfig(
                seed=config.seed, eval_fraction=config.eval_fraction)))
        phase("curate", t0)

        t0 = time.perf_counter()
        settings = {**config.train, "seed": config.seed}
        with console.status("train (DeepSpeed) → evaluate → gate → register…"):
            result = improve(str(cfg.home), "sft", "production",
                             [curated["datasets"]["sft"]["dataset_id"]], settings, config.procs,
                             config.gate, config.gate_limit)
        phase("train + evaluate + register", t0)
        run = RunRecord.parse(result["run"])
        report = EvalReport.parse(result["eval"])
        candidate = Registered.parse(result["registered"]).version
        accepted = report.gate.accepted

        if accepted:
            t0 = time.perf_counter()
            keys_ = ensure_keys(cfg)
            promote(cfg.store(), candidate, "production", [keys_["promote"]],
                    note=f"maintainer: gate accepted run {run.run_id}")
            with console.status("rolling out: nodes load the new version, gateway switches…"):
                _wait_rollout(base, candidate)
            phase("promote + rollout", t0)
            t0 = time.perf_counter()
            with console.status("held-out evaluation through the swarm, new version…"):
                summary["eval_after"] = {
                    k: swarm_eval(base, keys["app"], manifest.name, its,
                                  concurrency=config.concurrency, max_tokens=config.max_tokens)
                    for k, its in report_sets.items()}
            summary["paired"] = {k: mcnemar(summary["eval_before"][k]["outcomes"],
                                            summary["eval_after"][k]["outcomes"],
                                            "greater").model_dump()
                                 for k in report_sets}
            phase("eval after", t0)
        else:
            console.log("[red]the gate refused the candidate:[/red] "
                        + "; ".join(report.gate.reasons))
        summary["nodes"] = httpx.get(f"{swarm.tracker_url}/nodes", timeout=5).json()
    finally:
        swarm.stop()

    stored = [r for a in accounts.values() for r in store.query(contributor_id=a.account_id,
                                                                 limit=100_000)]
    counts = curated["counts"]
    summary.update(
        candidate=candidate, gate=report.gate.model_dump(), promoted=accepted,
        traces={"stored": len(stored),
                "optout_stored": len(store.query(contributor_id=accounts["optout"].account_id)),
                "scrubbed_records": counts["scrub"]["records_changed"],
                "replaced": counts["scrub"]["replaced"],
                "deduplicated": {k: v["dropped"] for k, v in counts["dedup"].items()},
                "decontaminated": counts["decontamination"]["dropped"],
                "filtered": counts["quality"]["dropped"]},
        datasets={k: {"id": d["dataset_id"], **d["splits"]}
                  for k, d in curated["datasets"].items()},
        training={k: getattr(run.finished(), k) for k in (
            "steps", "tokens", "loss_first", "loss_last", "tokens_per_s", "world_size",
            "eval_before", "eval_after", "loss_curve")},
        gate_metrics={"production": getattr(report, "production_metrics", None),
                      "candidate": report.metrics},
        channel=[{"sequence": r.sequence, "version": r.version, "note": r.note}
                 for r in cfg.client().history("production")],
        phases=phases, seconds=round(time.perf_counter() - t_start, 1))
    out = cfg.home / "run"
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "nodes"},
                                              indent=2, default=str))
    _plot(summary, out / "demo.png")
    _print(console, summary)
    console.log(f"done in {summary['seconds']:.0f} s; {out / 'demo.json'} and {out / 'demo.png'}")
    return summary


def _verifier(v: dict) -> dict:
    nodes = v.get("nodes", {})
    return {"nodes": len(nodes), "trusted": sum(n["status"] == "trusted" for n in nodes.values()),
            "checks_passed": sum(n["passed"] for n in nodes.values()),
            "failures": v.get("failures", 0)}


def _wait_rollout(base: str, version: str, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/v1/rollout", timeout=10).json()["current"] == version:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the swarm did not move to {version[:19]}… in {timeout_s:.0f} s")


def _print(console, s: dict) -> None:
    from rich.table import Table

    from registry.manifest import short_id

    table = Table(title=f"shoal flywheel (seed {s['seed']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    w = s["workload"]
    table.add_row("serving", f"{w['requests']} requests, {w['tok_s_per_stream']} tok/s per stream, "
                             f"{w['tokens_per_traversal']} tokens/traversal")
    table.add_row("contributors", f"{w['tasks']} tasks ({w['general']} plain questions): "
                                  f"{w['correct']} answered right, {w['corrected']} corrected")
    v = s["verifier"]
    table.add_row("proofs", f"{v['trusted']}/{v['nodes']} nodes trusted, {v['checks_passed']} "
                            f"checks passed, {v['failures']} failures")
    t = s["traces"]
    table.add_row("traces", f"{t['stored']} stored ({t['optout_stored']} from the opted-out user), "
                            f"{t['scrubbed_records']} scrubbed {t['replaced']}, deduped "
                            f"{t['deduplicated']}, decontaminated {t['decontaminated']}")
    table.add_row("datasets", ", ".join(f"{k} {d['train']}+{d['eval']}"
                                        for k, d in s["datasets"].items()))
    tr = s["training"]
    table.add_row("training", f"{tr['steps']} steps × {tr['world_size']} processes, loss "
                              f"{tr['loss_first']:.3f} → {tr['loss_last']:.3f}, "
                              f"{tr['tokens_per_s']} tok/s")
    gate = "ACCEPTED" if s["gate"]["accepted"] else "REFUSED: " + "; ".join(s["gate"]["reasons"])
    tests = [f"{c['metric']}: {c['paired']['wins']} won, {c['paired']['losses']} lost, "
             f"p = {c['paired']['p_value']:.2g}" for c in s["gate"]["checks"] if c.get("paired")]
    table.add_row("gate", gate + (f" ({'; '.join(tests)})" if tests else ""))
    for k in s["eval_before"]:
        table.add_row(f"{s['config']['report_sets'][k]} (swarm)", _before_after(s, k))
    table.add_row("production", "  ".join(f"#{r['sequence']} {short_id(r['version'])} "
                                          f"({r['note'][:30]})" for r in s["channel"]))
    table.add_row("time", ", ".join(f"{k} {v:.0f}s" for k, v in s["phases"].items()))
    console.print(table)


def _before_after(s: dict, key: str) -> str:
    """`0.00 [0.00, 0.03] → 0.41 [0.33, 0.50] (p = …)` for one reporting set."""
    def one(r: dict) -> str:
        return f"{r['accuracy']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"

    before = s["eval_before"][key]
    if "eval_after" not in s:
        return f"{one(before)} (n {before['n']}, not promoted)"
    p = s["paired"][key]
    return (f"{one(before)} → {one(s['eval_after'][key])} (n {before['n']}; paired: "
            f"{p['wins']} won, {p['losses']} lost, p = {p['p_value']:.2g})")


def _plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    keys = list(s["eval_before"])
    for x, key in enumerate(keys):
        for dx, side, color in ((-0.2, "eval_before", "#999999"), (0.2, "eval_after", "#4477aa")):
            r = s.get(side, {}).get(key)
            if r is None:
                continue
            acc, (lo, hi) = r["accuracy"], r["ci95"]
            a.bar(x + dx, acc, 0.4, color=color, yerr=[[acc - lo], [hi - acc]], capsize=3,
                  label=("genesis" if side == "eval_before" else "new version") if x == 0 else None)
    a.set_xticks(range(len(keys)), [s["config"]["report_sets"][k] for k in keys])
    a.set_ylim(0, 1)
    a.legend()
    a.set_title("held-out, through the swarm (95 % CI)")
    a.set_ylabel("accuracy")
    b.plot(range(1, len(s["training"]["loss_curve"]) + 1), s["training"]["loss_curve"],
           marker="o")
    b.set_xlabel("step")
    b.set_ylabel("SFT loss")
    b.set_title("training (DeepSpeed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
