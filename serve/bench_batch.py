"""`shoal bench batch`: what the Batch API's scheduler gets out of a swarm, side by side in one run
on one swarm (tracker, `nodes` node processes, the gateway with its scheduler, all on loopback):

1. **one session**: `single` lines as interactive requests, one at a time (tok/s);
2. **concurrent interactive**: all `lines` lines as interactive requests, `clients` at a time;
3. **batch**: the same lines as one batch job (upload, create, poll until completed);
4. **interactive latency**: `probes` short interactive requests one after another, on the idle
   swarm and then while a second batch of the same lines runs (p50/p95, with bootstrap 95 %
   intervals: the samples are small);
5. **single-process batched `generate`**: the same lines through HF `generate` in this process,
   `clients` prompts per left-padded batch, run before the swarm starts (the machine to itself):
   what one machine holding the whole model does with the same work.

Throughput counts the completion tokens of the answers (their `usage`) over the phase's wall time.
Node utilisation is each node's compute time (its own `compute_s`, read from the tracker) over the
phase's wall time. Writes `batch.json`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KEY = "sk-bench"
TOPICS = ["the sea", "a city at night", "bread", "a long walk", "rivers", "the moon", "trains",
          "old maps", "winter", "a small garden", "bees", "lighthouses"]


@dataclass
class BatchBenchConfig:
    model: str
    """Registry reference of the model every process serves."""
    out_dir: Path = Path("bench-out")
    nodes: int = 3
    lines: int = 500
    tokens: int = 32
    """Completion tokens per line (`max_tokens`; `ignore_eos`-free, so some stop early)."""
    clients: int = 16
    """Concurrent interactive requests in phase 2."""
    single: int = 20
    """Lines run one at a time in phase 1."""
    probes: int = 20
    probe_tokens: int = 8
    threads_per_node: int = 1
    batch_sessions: int | None = None
    """The gateway's batch sessions on an idle swarm (None: `BatchConfig`'s default)."""
    busy_sessions: int | None = None
    """Batch lines that go on beside interactive requests (None: `BatchConfig`'s default)."""
    model_kind: str = "registry model"
    """What `model` is, as the report should say (e.g. "tiny random Llama")."""


def line(i: int, tokens: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    return {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "default", "max_tokens": tokens, "temperature": 0,
                     "messages": [{"role": "user",
                                   "content": f"Write line {i} of a poem about {topic}."}]}}


def _busy(swarm) -> dict[str, float]:
    import httpx

    return {n["node_id"]: float(n.get("stats", {}).get("compute_s", 0.0))
            for n in httpx.get(f"{swarm.tracker_url}/nodes", timeout=5).json()}


def _utilisation(before: dict[str, float], after: dict[str, float], wall: float) -> dict:
    per = {n[:12]: round((after[n] - before.get(n, 0.0)) / wall, 3) for n in after}
    return {"per_node": per, "mean": round(sum(per.values()) / max(1, len(per)), 3)}


def _quantile_ci(values: list[float], q: float, rounds: int = 2000) -> dict:
    """The q-quantile of `values` in ms and a bootstrap 95 % interval."""
    import numpy as np

    arr = np.asarray(values) * 1000
    rng = np.random.default_rng(0)
    boot = np.quantile(rng.choice(arr, (rounds, len(arr))), q, axis=1)
    return {"ms": round(float(np.quantile(arr, q)), 1),
            "ci95": [round(float(np.quantile(boot, 0.025)), 1),
                     round(float(np.quantile(boot, 0.975)), 1)]}


async def _interactive(client, lines: list[dict], concurrency: int) -> tuple[int, float]:
    """Send `lines` as chat requests, `concurrency` at a time: (completion tokens, wall s)."""
    queue = list(lines)
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        while queue:
            body = queue.pop(0)["body"]
            r = await client.chat.completions.create(**body)
            tokens += r.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens, time.perf_counter() - t0


async def _probe(client, cfg: BatchBenchConfig, until=None) -> list[float]:
    latencies = []
    for i in range(cfg.probes):
        if until is not None and until():
            break
        body = line(10_000 + i, cfg.probe_tokens)["body"]
        t0 = time.perf_counter()
        await client.chat.completions.create(**body)
        latencies.append(time.perf_counter() - t0)
    return latencies


async def _batch(client, lines: list[dict], probe=None) -> dict:
    """Run `lines` as one batch job (and `probe(done)` beside it): tokens, wall, probes."""
    data = ("\n".join(json.dumps(x) for x in lines) + "\n").encode()
    f = await client.files.create(file=("bench.jsonl", data), purpose="batch")
    t0 = time.perf_counter()
    job = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    finished = False

    async def poll():
        nonlocal job, finished
        while job.status not in ("completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(0.25)
            job = await client.batches.retrieve(job.id)
        finished = True
        return time.perf_counter() - t0

    probes = asyncio.create_task(probe(lambda: finished)) if probe else None
    wall = await poll()
    latencies = await probes if probes else []
    out = (await client.files.content(job.output_file_id)).text.splitlines() \
        if job.output_file_id else []
    tokens = sum(json.loads(x)["response"]["body"]["usage"]["completion_tokens"] for x in out)
    return {"status": job.status, "completed": job.request_counts.completed,
            "failed": job.request_counts.failed, "tokens": tokens, "wall_s": wall,
            "latencies": latencies}


def single_process_batched(directory: Path, lines: list[dict], batch: int) -> dict:
    """Greedy HF `generate` over the lines' chat prompts, `batch` at a time (left-padded), in
    this process; tokens are counted up to and including each row's end of sequence."""
    import torch

    from serve.local import LocalModel

    local = LocalModel.load(directory)
    tok = local.tokenizer
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(lines), batch):
            group = lines[i:i + batch]
            prompts = [local.chat_ids(x["body"]["messages"]) for x in group]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            out = local.model.generate(ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max(x["body"]["max_tokens"] for x in group),
                                       pad_token_id=pad)[:, width:]
            for row in out.tolist():
                ends = [k for k, t in enumerate(row) if t == tok.eos_token_id]
                tokens += ends[0] + 1 if ends else len(row)
    wall = time.perf_counter() - t0
    return {"lines": len(lines), "batch": batch, "tokens": tokens, "wall_s": round(wall, 2),
            "tok_s": round(tokens / wall, 2)}


def run_batch_bench(cfg: BatchBenchConfig, shoal_cfg) -> dict:
    import openai

    from serve.up import LocalSwarm, SwarmSpec

    client_ = shoal_cfg.client()
    version_id = client_.resolve(cfg.model)
    _, manifest = client_.checkout_role(version_id, shoal_cfg.models_dir, "head")
    spec = SwarmSpec(model=version_id, nodes=cfg.nodes, api_keys=[KEY],
                     threads_per_node=cfg.threads_per_node, batch_sessions=cfg.batch_sessions,
                     batch_busy_sessions=cfg.busy_sessions)
    lines = [line(i, cfg.tokens) for i in range(cfg.lines)]
    random.Random(0).shuffle(lines)
    full, _ = client_.checkout_role(version_id, shoal_cfg.models_dir, "full")
    results: dict = {"single_process_generate": single_process_batched(full, lines, cfg.clients)}
    with LocalSwarm(spec, shoal_cfg.home, manifest.num_layers).start() as swarm:

        async def phases() -> None:
            client = openai.AsyncOpenAI(base_url=f"{swarm.base_url}/v1", api_key=KEY,
                                        max_retries=3, timeout=600)
            await _interactive(client, lines[:4], 2)  # warm caches and routes

            async def phase(name: str, run):
                before = _busy(swarm)
                out = await run()
                wall = out["wall_s"]
                out["tok_s"] = round(out["tokens"] / wall, 2)
                out["utilisation"] = _utilisation(before, _busy(swarm), wall)
                out["wall_s"] = round(wall, 2)
                results[name] = out

            async def interactive(n: int, c: int) -> dict:
                tokens, wall = await _interactive(client, lines[:n], c)
                return {"lines": n, "concurrency": c, "tokens": tokens, "wall_s": wall}

            await phase("one_session", lambda: interactive(cfg.single, 1))
            await phase("concurrent_interactive",
                        lambda: interactive(cfg.lines, cfg.clients))
            await phase("batch", lambda: _batch(client, lines))
            idle = await _probe(client, cfg)
            await phase("batch_with_probes",
                        lambda: _batch(client, lines, lambda done: _probe(client, cfg, done)))
            busy = results["batch_with_probes"].pop("latencies")
            results["batch"].pop("latencies")
            results["interactive_latency"] = {
                "idle": {"n": len(idle), "p50": _quantile_ci(idle, 0.5),
                         "p95": _quantile_ci(idle, 0.95)},
                "during_batch": {"n": len(busy), "p50": _quantile_ci(busy, 0.5),
                                 "p95": _quantile_ci(busy, 0.95)}}
            await client.close()

        asyncio.run(phases())
    one = results["one_session"]["tok_s"]
    lat = results["interactive_latency"]
    report = {
        "config": {**asdict(cfg), "out_dir": str(cfg.out_dir), "version": version_id,
                   "layers": manifest.num_layers},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "results": results,
        "summary": {
            "batch_over_one_session": round(results["batch"]["tok_s"] / one, 2),
            "concurrent_interactive_over_one_session":
                round(results["concurrent_interactive"]["tok_s"] / one, 2),
            "batch_over_concurrent_interactive": round(
                results["batch"]["tok_s"] / results["concurrent_interactive"]["tok_s"], 2),
            "batch_over_single_process_generate": round(
                results["batch"]["tok_s"] / results["single_process_generate"]["tok_s"], 2),
            "batch_node_utilisation": results["batch"]["utilisation"]["mean"],
            "interactive_p95_during_batch_over_idle": round(
                lat["during_batch"]["p95"]["ms"] / lat["idle"]["p95"]["ms"], 2)}}
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "batch.json").write_text(json.dumps(report, indent=1))
    return report
