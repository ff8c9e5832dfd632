"""`shoal bench api`: what the gateway's HTTP layer costs per request — the guard (body bound,
key lookup in a real trace store), request validation, chat-template tokenization and the
OpenAI response — with the swarm replaced by a stub engine that answers one token at once.

The gateway runs as its own process (uvicorn, as `shoal gateway` runs it); `clients` concurrent
clients in this process send valid chat requests with a contributor-less app key for
`duration_s`, then `GET /v1/models` (the guard and key check alone) for `baseline_s` on the
same server, side by side. Reported for each: requests/s (whole run and per 5 s window),
latency p50/p90/p99/max, the server's CPU time per request (what the layer costs, whatever else
shares the machine), responses other than 200 and transport errors, and the server's resident
memory at start, peak and end, sampled every second (a leak shows as growth). Writes `api.json`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

BODY = {"model": "bench", "max_tokens": 1, "temperature": 0, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."}]}


@dataclass
class ApiBenchConfig:
    model_dir: Path
    """A model directory with a tokenizer, config and head weights (the head role)."""
    out_dir: Path = Path("bench-out")
    clients: int = 64
    duration_s: float = 60.0
    warmup_s: float = 3.0
    baseline_s: float = 15.0
    """Then `GET /v1/models` (guard and key check alone) for this long, side by side on the
    same server (0: skip)."""


class StubEngine:
    """Stands in for `serve.gateway.engine.Engine`: the real head (tokenizer, context), no swarm;
    every request gets one token at once."""

    def __init__(self, head) -> None:
        self.head = head
        self.drafters: dict = {}
        self.requests = self.tokens_generated = self.cancelled = 0
        self.spec_stats: dict = {}
        self.pipeline = _StubPipeline()
        self.token = next(i for i in range(len(head.tokenizer)) if i not in head.stop_ids)

    async def generate(self, prompt, params, outcome, drafter=None, k=None, **_) -> AsyncIterator:
        from serve.sampling import Step

        self.requests += 1
        outcome.prompt_tokens = len(prompt)
        outcome.completion_tokens = 1
        self.tokens_generated += 1
        yield Step(self.token)


class _StubPipeline:
    traversals = failovers = 0

    async def route(self) -> list:
        return []

    def _excluded_now(self) -> set:
        return set()


def _serve(model_dir: str, store_dir: str, port: int) -> None:
    """The gateway process: the real app and guard over a stub engine and a real trace store."""
    import uvicorn

    from serve.gateway.api import GatewayState, Runtime, create_app
    from serve.gateway.head import Head
    from serve.rollout import VersionSet
    from traces.store import TraceStore, TraceStoreConfig

    version = "sha256:" + "0" * 64
    runtime = Runtime(version, StubEngine(Head(Path(model_dir))))  # type: ignore[arg-type]
    state = GatewayState(VersionSet(version, runtime), "bench")
    state.traces = TraceStore(TraceStoreConfig(uri=f"{store_dir}/lancedb",
                                               log_dir=Path(store_dir) / "log", embed=False))
    uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _load(base: str, key: str, cfg: ApiBenchConfig, pid: int, duration_s: float,
                chat: bool = True) -> dict:
    """`cfg.clients` clients sending chat requests (or, `chat=False`, `GET /v1/models`: the
    guard and key check alone) for `duration_s`."""
    import httpx

    latencies: list[float] = []
    finished: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    rss: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=30) as http:
        async def call() -> httpx.Response:
            if chat:
                return await http.post("/v1/chat/completions", json=BODY)
            return await http.get("/v1/models")

        warm_until = time.perf_counter() + cfg.warmup_s
        while time.perf_counter() < warm_until:  # first requests build caches (template, key)
            await call()
        cpu_start = _cpu_s(pid)
        start = time.perf_counter()
        stop = start + duration_s

        async def client() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await call()
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                finished.append(t1 - start)

        async def sample_memory() -> None:
            while time.perf_counter() < stop:
                rss.append(_rss_mb(pid))
                await asyncio.sleep(1.0)

        await asyncio.gather(sample_memory(), *(client() for _ in range(cfg.clients)))
        elapsed = time.perf_counter() - start
        server_cpu = _cpu_s(pid) - cpu_start
    ordered = sorted(latencies)
    window = 5.0
    windows = [sum(1 for f in finished if i * window <= f < (i + 1) * window) / window
               for i in range(int(duration_s // window))]
    ok = statuses.get(200, 0)
    return {
        "requests": len(latencies), "ok": ok, "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "requests_per_s_by_5s_window": {"min": min(windows, default=0.0),
                                        "median": statistics.median(windows) if windows else 0.0,
                                        "max": max(windows, default=0.0)},
        "latency_ms": {name: round(_percentile(ordered, q) * 1000, 2)
                       for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99),
                                       ("max", 1.0))},
        "server_cpu_ms_per_request": round(server_cpu * 1000 / max(1, len(latencies)), 3),
        "errors": len(errors) + sum(n for s, n in statuses.items() if s != 200),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "transport_errors": errors[:5],
        "server_rss_mb": {"start": round(rss[0], 1) if rss else None,
                          "peak": round(max(rss), 1) if rss else None,
                          "end": round(rss[-1], 1) if rss else None,
                          "first_half_peak": round(max(rss[:len(rss) // 2] or rss), 1)
                          if rss else None},
    }


def run_api_bench(cfg: ApiBenchConfig) -> dict:
    """Start the gateway process, drive it, stop it; write and return the report."""
    import httpx

    from serve.up import free_port
    from traces.store import TraceStore, TraceStoreConfig

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    store_dir = cfg.out_dir / "api-bench-store"
    store = TraceStore(TraceStoreConfig(uri=f"{store_dir}/lancedb", log_dir=store_dir / "log",
                                        embed=False))
    key = store.create_key(store.create_account("app", "bench").account_id)[1]
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(str(cfg.model_dir), str(store_dir), port), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/v1/models", timeout=2,
                             headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not server.is_alive():
                raise RuntimeError("the bench gateway did not start")
            time.sleep(0.2)
        result = asyncio.run(_load(base, key, cfg, server.pid, cfg.duration_s))
        if cfg.baseline_s > 0:
            result["auth_only"] = asyncio.run(_load(base, key, cfg, server.pid, cfg.baseline_s,
                                                    chat=False))
    finally:
        server.terminate()
        server.join(10)
    report = {"config": {**asdict(cfg), "model_dir": str(cfg.model_dir),
                         "out_dir": str(cfg.out_dir)},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "measures": "guard (body bound, trace-store key), validation, chat template, "
                          "response; stub engine (one token, no swarm)",
              **result}
    (cfg.out_dir / "api.json").write_text(json.dumps(report, indent=1))
    return report
