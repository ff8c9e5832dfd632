"""`shoal bench swarm`: speed of the swarm against single-process generate and the naive mode.

One run starts the nodes once (with a latency relay in front of every hop), drives them from an
in-process gateway engine, and sweeps the one-way delay by rewriting the relay's delay file, so
every number in the JSON was measured side by side on the same processes:

- single-stream decode tok/s and time to first token for prompts of each length,
- aggregate tok/s with 1, 4, 16 concurrent sessions,

for chain forwarding (gateway -> A -> B -> C -> gateway) and for the naive mode (the gateway
calls each node in turn), plus single-process HF `generate` on the same machine as the baseline.
Writes `swarm.json` and `swarm.png`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class SwarmBenchConfig:
    model: str = "production"
    nodes: int = 3
    delays_ms: list[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 20.0])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    decode_tokens: int = 32
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 512])
    threads_per_node: int = 1
    out_dir: Path = Path("bench-out")
    proofs: bool = False
    """Also measure verification overhead, fingerprint calibration and detection odds."""
    drafters: list[str] = field(default_factory=lambda: ["off", "prompt_lookup", "suffix"])
    """Speculation sweep (empty: skip it). 'draft_model' needs `draft_model`."""
    draft_model: str | None = None
    spec_tokens: int = 48
    spec_prompts: int | None = None
    """Held-out prompts measured per workload (None: all of them)."""
    proof_rounds: int = 5
    """Paired rounds (verification off, then on) per verifier setting in the proofs part."""


FILLER = ("Agents call tools, read files and write code; the swarm serves them token by token "
          "while the gateway keeps the sampler. ")


def prompt_of(tokenizer, length: int) -> list[int]:
    ids = tokenizer(FILLER * (length // 8 + 2))["input_ids"]
    return ids[:length]


async def _generate(engine, prompt: list[int], tokens: int) -> tuple[float, float, int]:
    """(ttft_s, total_s, tokens) of one greedy generation that ignores end-of-sequence."""
    from serve.gateway.engine import Outcome
    from serve.sampling import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    outcome = Outcome()
    async for _ in engine.generate(prompt, params, outcome):
        pass
    return outcome.first_token_s, outcome.total_s, outcome.completion_tokens


async def measure_engine(engine, tokenizer, cfg: SwarmBenchConfig) -> dict:
    short = prompt_of(tokenizer, 16)
    await _generate(engine, short, 2)  # warm connections and caches
    ttft, total, n = await _generate(engine, short, cfg.decode_tokens)
    out = {"decode_tok_s": (n - 1) / max(1e-9, total - ttft)}
    for length in cfg.prompt_lengths:
        out[f"ttft_{length}_s"] = (await _generate(engine, prompt_of(tokenizer, length), 1))[0]
    for c in cfg.concurrency:
        t0 = time.perf_counter()
        runs = await asyncio.gather(*(_generate(engine, short, cfg.decode_tokens)
                                      for _ in range(c)))
        out[f"aggregate_{c}_tok_s"] = sum(r[2] for r in runs) / (time.perf_counter() - t0)
    return out


def measure_generate(model, tokenizer, cfg: SwarmBenchConfig) -> dict:
    """Single-process HF generate on the same machine (all cores), the baseline."""
    short = torch.tensor([prompt_of(tokenizer, 16)])
    gen = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(short, max_new_tokens=2, min_new_tokens=2, **gen)
        t0 = time.perf_counter()
        model.generate(short, max_new_tokens=1, min_new_tokens=1, **gen)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(short, max_new_tokens=cfg.decode_tokens, min_new_tokens=cfg.decode_tokens,
                       **gen)
        total = time.perf_counter() - t0
        out = {"decode_tok_s": (cfg.decode_tokens - 1) / max(1e-9, total - first)}
        for length in cfg.prompt_lengths:
            ids = torch.tensor([prompt_of(tokenizer, length)])
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
            out[f"ttft_{length}_s"] = time.perf_counter() - t0
        for c in cfg.concurrency:
            t0 = time.perf_counter()
            model.generate(short.repeat(c, 1), max_new_tokens=cfg.decode_tokens,
                           min_new_tokens=cfg.decode_tokens, **gen)
            out[f"aggregate_{c}_tok_s"] = c * cfg.decode_tokens / (time.perf_counter() - t0)
    return out


def run_swarm_bench(cfg: SwarmBenchConfig, shoal_cfg) -> dict:
    from serve.discovery import TrackerDiscovery
    from serve.gateway.engine import Engine
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline
    from serve.local import LocalModel
    from serve.up import LocalSwarm, SwarmSpec

    client = shoal_cfg.client()
    version_id = client.resolve(cfg.model)
    directory, manifest = client.checkout_role(version_id, shoal_cfg.models_dir, "full")
    baseline = LocalModel.load(directory)
    results: dict = {"generate": measure_generate(baseline.model, baseline.tokenizer, cfg),
                     "swarm": {}}
    del baseline
    head = Head(directory)
    drafters = build_drafters(cfg, client, shoal_cfg)
    spec = SwarmSpec(model=version_id, nodes=cfg.nodes, relay=True, gateway=False,
                     delay_ms=cfg.delays_ms[0], threads_per_node=cfg.threads_per_node)
    with LocalSwarm(spec, shoal_cfg.home, manifest.num_layers).start() as swarm:

        async def sweep() -> None:
            key = swarm.gateway_key  # the swarm's own gateway key: its verdicts count
            pipeline = Pipeline(TrackerDiscovery(swarm.tracker_url, key=key), head.num_layers,
                                version_id, return_port=swarm.return_port,
                                return_url=swarm.return_url, key=key)
            await pipeline.start()
            engine = Engine(head, pipeline, drafters)
            for delay in cfg.delays_ms:
                swarm.set_delay(delay)
                await asyncio.sleep(0.2)
                row = results["swarm"][f"{delay:g}"] = {}
                for mode in ("chain", "naive"):
                    pipeline.chain = mode == "chain"
                    row[mode] = await measure_engine(engine, head.tokenizer, cfg)
            if cfg.proofs:
                from serve.bench_proofs import bench_proofs

                swarm.set_delay(0)
                results["proofs"] = await bench_proofs(
                    pipeline, engine, head, manifest, directory,
                    prompt_of(head.tokenizer, 16), rounds=cfg.proof_rounds)
            if cfg.drafters:
                from serve.bench_spec import sweep_speculation

                results["speculation"] = await sweep_speculation(
                    swarm, pipeline, engine, head, cfg.delays_ms, cfg.drafters, cfg.spec_tokens,
                    hops=cfg.nodes, prompts_per_workload=cfg.spec_prompts)
            await pipeline.stop()

        asyncio.run(sweep())
    report = {"config": {**asdict(cfg), "out_dir": str(cfg.out_dir), "version": version_id,
                         "layers": manifest.num_layers},
              "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
              "results": results, "summary": summarize(results, cfg)}
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "swarm.json").write_text(json.dumps(report, indent=2))
    plot(report, cfg.out_dir / "swarm.png")
    return report


def build_drafters(cfg: SwarmBenchConfig, client, shoal_cfg) -> dict:
    from serve.drafters import add_compositions, make_drafter

    drafters = {d: make_drafter(d) for d in cfg.drafters if d in ("prompt_lookup", "suffix")}
    if "draft_model" in cfg.drafters:
        if not cfg.draft_model:
            raise ValueError("the draft_model drafter needs --draft-model REF")
        version = client.resolve(cfg.draft_model)
        where = client.checkout_role(version, shoal_cfg.models_dir, "full")[0]
        drafters["draft_model"] = make_drafter("draft_model", directory=where)
    add_compositions(drafters)
    missing = [d for d in cfg.drafters if d != "off" and d not in drafters]
    if missing:
        raise ValueError(f"drafters {missing} are unknown or need their members in the list "
                         f"too (e.g. prompt_lookup,suffix,prompt_lookup+suffix)")
    return drafters


def summarize(results: dict, cfg: SwarmBenchConfig) -> dict:
    out = {}
    top = max(cfg.concurrency)
    for delay, row in results["swarm"].items():
        chain, naive = row["chain"], row["naive"]
        out[delay] = {
            "chain_over_naive_decode": chain["decode_tok_s"] / naive["decode_tok_s"],
            "chain_over_generate_decode": chain["decode_tok_s"] /
            results["generate"]["decode_tok_s"],
            f"chain_aggregate_{top}_over_single": chain[f"aggregate_{top}_tok_s"] /
            chain["aggregate_1_tok_s"] if 1 in cfg.concurrency else None}
    if "proofs" in results:
        p = results["proofs"]
        first = results["swarm"][min(results["swarm"])]["chain"]
        decode_ms = 1000 / first["decode_tok_s"]  # one traversal per token without a drafter
        out["proofs"] = {"overhead_default": p["default"]["overhead"],
                         "overhead_aggressive": p["aggressive"]["overhead"],
                         "one_layer_swap": p["detection"]["one_layer_swap"],
                         "honest_rel_error_max": p["calibration"]["honest_rel_error_max"],
                         "protocol_us_per_decode_traversal":
                             p["protocol"]["decode_us_per_traversal"],
                         "protocol_share_of_decode_time":
                             p["protocol"]["decode_us_per_traversal"] / 1000 / decode_ms,
                         "mirror_ms_per_token": p["spot_checks"]["mirror_ms_per_token"],
                         "expected_requests_before_eviction":
                             p["spot_checks"]["expected_requests_before_eviction"]}
    if "speculation" in results:
        from serve.bench_spec import summarize_speculation

        out["speculation"] = summarize_speculation(results["speculation"])
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    keys = list(res["swarm"])
    delays = [float(k) for k in keys]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("chain", "o-"), ("naive", "s--")):
        a.plot(delays, [res["swarm"][k][mode]["decode_tok_s"] for k in keys], style,
               label=f"swarm, {mode}")
    a.axhline(res["generate"]["decode_tok_s"], color="gray", ls=":", label="single-process")
    a.set(xlabel="one-way delay per hop (ms)", ylabel="single-stream decode tok/s",
          title="Decode speed vs link delay")
    a.legend()
    conc = report["config"]["concurrency"]
    for k in keys:
        b.plot(conc, [res["swarm"][k]["chain"][f"aggregate_{c}_tok_s"] for c in conc], "o-",
               label=f"chain, {k} ms")
    b.plot(conc, [res["generate"][f"aggregate_{c}_tok_s"] for c in conc], "k:",
           label="single-process (batched)")
    b.set(xlabel="concurrent sessions", ylabel="aggregate tok/s", title="Throughput", xscale="log")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
