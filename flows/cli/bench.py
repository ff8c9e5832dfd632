"""`shoal bench …`: the benchmarks, programs that write JSON (and a PNG plot) to an output
directory: swarm, api, batch, discovery, transport, registry, traces, curate, train.

Each benchmark lives next to the code it measures (`serve.bench`, `registry.bench`,
`traces.bench`, `curate.bench`, `train.bench`); these commands parse the options, run it and print
its summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer

from flows.cli.base import DEFAULT_MODEL, command, config, group

T = TypeVar("T")

cli = typer.Typer()
"""What this module adds to `shoal`: the `bench` group."""
bench_app = group(cli, "bench", "Benchmarks: programs that write JSON and a PNG plot.")


def _split(option: str, text: str, kind: Callable[[str], T]) -> list[T]:
    """The comma-separated values of `option` as a list of `kind`."""
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated "
                         f"{getattr(kind, '__name__', 'value')}s") from None


@command(bench_app, "swarm")
def bench_swarm(model: str = DEFAULT_MODEL, nodes: int = 3,
                delays: Annotated[str, typer.Option(help="one-way ms per hop")] = "0,5,10,20",
                concurrency: str = "1,4,16", tokens: int = 32, prompts: str = "128,512",
                drafters: Annotated[str, typer.Option(
                    help="speculation sweep; '' skips it")] = "off,prompt_lookup,suffix",
                draft_model: Annotated[Optional[str], typer.Option(
                    help="registry ref of a draft model (adds the draft_model drafter)")] = None,
                spec_tokens: int = 48,
                proofs: Annotated[bool, typer.Option(
                    "--proofs", help="verification overhead and detection odds")] = False,
                out: Path = Path("bench-out")) -> None:
    """Swarm vs single-process generate vs naive mode, across link delays."""
    delays_ms = _split("--delays", delays, float)
    levels = _split("--concurrency", concurrency, int)
    lengths = _split("--prompts", prompts, int)
    from serve.bench import SwarmBenchConfig, run_swarm_bench

    cfg = SwarmBenchConfig(model=model, nodes=nodes, delays_ms=delays_ms, concurrency=levels,
                           decode_tokens=tokens, prompt_lengths=lengths, out_dir=out,
                           drafters=[d for d in drafters.split(",") if d]
                           + (["draft_model"] if draft_model else []),
                           draft_model=draft_model, spec_tokens=spec_tokens, proofs=proofs)
    report = run_swarm_bench(cfg, config())
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {out / 'swarm.json'} and {out / 'swarm.png'}")


@command(bench_app, "registry")
def bench_registry(model: str = DEFAULT_MODEL, span: int = 10, import_default: bool = True,
                   out: Path = Path("bench-out")) -> None:
    """Hash throughput, 10-layer span verification, and the default import's time and memory."""
    from registry.bench import run_registry_bench

    report = run_registry_bench(config(), model, out, span, import_default)
    typer.echo(json.dumps(report, indent=2))


@command(bench_app, "traces")
def bench_traces(traces: int = 5000,
                 writers: Annotated[str, typer.Option(help="concurrent writer counts")] = "1,4,16",
                 embedder: Annotated[str, typer.Option(help="the store's embedder")] = "static",
                 compare: Annotated[str, typer.Option(
                     help="embedders to compare with MiniLM; '' skips it")] = "minilm-int8,static",
                 dedup_traces: Annotated[int, typer.Option(
                     help="corpus size for the dedup agreement")] = 300,
                 out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """Trace-path latency, end-to-end ingestion (rows + embeddings) by writer count, and the
    embedders' speed and semantic-dedup agreement with MiniLM."""
    levels = tuple(_split("--writers", writers, int))
    from traces.bench import run_traces_bench

    report = run_traces_bench(Path(out), traces, levels, embedder,
                              tuple(c for c in compare.split(",") if c),
                              dedup_traces if compare else 0)
    typer.echo(json.dumps(report, indent=2))


@command(bench_app, "curate")
def bench_curate(traces: int = 6000, tokens: int = 500,
                 workers: Annotated[str, typer.Option(help="pool sizes to compare")] = "1,2",
                 out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """Scrub + dedup throughput (traces/min) by number of worker processes."""
    pools = tuple(_split("--workers", workers, int))
    from curate.bench import run_curate_bench

    report = run_curate_bench(Path(out), traces, tokens, pools)
    typer.echo(json.dumps(report, indent=2))


@command(bench_app, "train")
def bench_train(model: str = DEFAULT_MODEL, steps: int = 4, micro_batch: int = 4, procs: int = 2,
                max_len: int = 128, zero: str = "zero1", grad_accum: int = 4,
                out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """SFT tokens/s: DeepSpeed (launcher, ZeRO) vs a plain torch loop, in one run."""
    _, directory = config().checkout(model)
    from train.bench import run_train_bench

    report = run_train_bench(directory, Path(out), steps=steps, micro_batch=micro_batch,
                             procs=procs, max_len=max_len, zero=zero, grad_accum=grad_accum)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "torch"} |
                          {"torch_tokens_per_s": report["torch"]["tokens_per_s"]}, indent=2))


@command(bench_app, "api")
def bench_api(model: str = DEFAULT_MODEL, clients: int = 64,
              duration: Annotated[float, typer.Option(help="seconds of load")] = 60.0,
              out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """The gateway's HTTP layer alone (key check, validation, template; stub engine):
    requests/s, latency p50/p99, errors and server memory under CLIENTS concurrent clients."""
    _, directory = config().checkout(model)
    from serve.bench_api import ApiBenchConfig, run_api_bench

    report = run_api_bench(ApiBenchConfig(model_dir=directory, out_dir=Path(out),
                                          clients=clients, duration_s=duration))
    typer.echo(json.dumps({k: report[k] for k in (
        "requests_per_s", "latency_ms", "server_cpu_ms_per_request", "errors", "server_rss_mb")},
        indent=2))
    typer.echo(f"wrote {Path(out) / 'api.json'}")


@command(bench_app, "batch")
def bench_batch(model: str = DEFAULT_MODEL, nodes: int = 3, lines: int = 500, tokens: int = 32,
                clients: Annotated[int, typer.Option(
                    help="concurrent interactive requests to compare with")] = 16,
                single: Annotated[int, typer.Option(help="lines run one at a time")] = 20,
                probes: Annotated[int, typer.Option(
                    help="interactive requests timed idle and during a batch")] = 20,
                model_kind: Annotated[str, typer.Option(
                    help="what MODEL is, as the report says")] = "registry model",
                batch_sessions: Annotated[Optional[int], typer.Option(
                    help="the gateway's batch sessions (default: its own)")] = None,
                busy_sessions: Annotated[Optional[int], typer.Option(
                    help="batch lines that go on beside interactive requests")] = None,
                out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """Batch API throughput vs the same lines as concurrent interactive requests vs one
    session; node utilisation; interactive p50/p95 while a batch runs vs idle."""
    from serve.bench_batch import BatchBenchConfig, run_batch_bench

    report = run_batch_bench(BatchBenchConfig(
        model=model, out_dir=Path(out), nodes=nodes, lines=lines, tokens=tokens,
        clients=clients, single=single, probes=probes, model_kind=model_kind,
        batch_sessions=batch_sessions, busy_sessions=busy_sessions), config())
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {Path(out) / 'batch.json'}")


@command(bench_app, "discovery")
def bench_discovery(nodes: Annotated[str, typer.Option(
                        help="announcer processes per run, comma-separated")] = "3,10",
                    lookup_s: Annotated[float, typer.Option(
                        help="seconds of back-to-back lookups per run")] = 5.0,
                    kills: Annotated[int, typer.Option(
                        help="processes killed per run, each removal timed")] = 3,
                    routed: Annotated[int, typer.Option(
                        help="real nodes per run, each timed from its start to the first "
                        "request a real gateway routes through it (0: skip)")] = 2,
                    model: Annotated[str, typer.Option(
                        help="registry ref the gateway and those nodes serve")] = DEFAULT_MODEL,
                    out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """DHT discovery: process start to visible, node start to first routed request, death to
    removal, full lookups per second."""
    from serve.bench_discovery import DiscoveryBenchConfig, run_discovery_bench

    report = run_discovery_bench(DiscoveryBenchConfig(
        sizes=_split("--nodes", nodes, int), lookup_s=lookup_s, kills=kills, routed=routed,
        model=model, out_dir=Path(out)), config())
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {Path(out) / 'discovery.json'} and {Path(out) / 'discovery.png'}")


@command(bench_app, "transport")
def bench_transport(sizes: Annotated[str, typer.Option(
                        help="frame sizes in bytes, comma-separated (default: one token and a "
                        "128-token prefill of SmolLM2 in fp32)")] = "2304,294912",
                    rounds: int = 10, trips: Annotated[int, typer.Option(
                        help="round trips per size, side and round")] = 50,
                    connects: int = 10,
                    out: Annotated[str, typer.Option()] = "bench-out") -> None:
    """Hop transport: round trips and new connections on ws:// and on pinned wss:// (TLS 1.3),
    side by side; the ratio with a 95 % interval."""
    from serve.bench_transport import TransportBenchConfig, run_transport_bench

    report = run_transport_bench(TransportBenchConfig(
        sizes=_split("--sizes", sizes, int), rounds=rounds, trips=trips, connects=connects,
        out_dir=Path(out)))
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {Path(out) / 'transport.json'} and {Path(out) / 'transport.png'}")
