"""`shoal` subcommands that run swarm processes: tracker, node, gateway, relay, up.

Like the rest of the CLI, each command imports its heavy dependencies only when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _cfg():
    from flows.config import ShoalConfig

    return ShoalConfig.from_env()


def _checkout(ref: str, what: str, files_for) -> tuple[str, Path, object]:
    """Resolve `ref` in the registry and fetch + verify the files `files_for(manifest)` names."""
    cfg = _cfg()
    client = cfg.client()
    version_id = client.resolve(ref)
    manifest = client.manifest(version_id)
    directory = cfg.models_dir / f"{version_id.removeprefix('sha256:')[:16]}-{what}"
    client.checkout(version_id, directory, files=files_for(manifest))
    return version_id, directory, manifest


def tracker(port: Annotated[int, typer.Option()] = 7000, ttl: float = 5.0) -> None:
    """Run the tracker that nodes announce to and gateways read."""
    import uvicorn

    from serve.tracker import create_app

    uvicorn.run(create_app(ttl_s=ttl), host="127.0.0.1", port=port, log_level="warning")


def node(model: Annotated[str, typer.Option(help="name@channel, channel or version")],
         layers: Annotated[str, typer.Option(help="START:END, end exclusive")],
         port: Annotated[int, typer.Option()],
         tracker: Annotated[Optional[str], typer.Option(help="tracker URL")] = None,
         announce_url: Annotated[Optional[str], typer.Option()] = None,
         threads: Annotated[Optional[int], typer.Option(help="torch threads")] = None,
         memory_budget_mb: float = 2048.0, idle_timeout: float = 300.0) -> None:
    """Serve layers START:END of a verified registry version."""
    from serve.node import NodeConfig, run_node

    try:
        start, end = (int(x) for x in layers.split(":"))
    except ValueError:
        raise typer.BadParameter(f"--layers {layers!r}: expected START:END") from None
    version_id, directory, _ = _checkout(
        model, f"L{start}-{end}", lambda m: m.small_files() + m.layer_files(start, end))
    run_node(NodeConfig(directory=directory, start=start, end=end, version_id=version_id,
                        port=port, announce_url=announce_url, tracker_url=tracker,
                        threads=threads, memory_budget_bytes=int(memory_budget_mb * 2**20),
                        idle_timeout_s=idle_timeout))


def gateway(model: Annotated[str, typer.Option()] = "production",
            tracker: Annotated[str, typer.Option()] = "http://127.0.0.1:7000",
            port: Annotated[int, typer.Option()] = 8000,
            return_port: int = 0, return_url: Optional[str] = None,
            api_key: Annotated[Optional[list[str]], typer.Option("--api-key")] = None,
            naive: Annotated[bool, typer.Option(help="call nodes one by one (benchmarks)")] = False,
            wire_dtype: str = "float32", timeout: float = 60.0,
            drafter: Annotated[str, typer.Option(help="default drafter or 'off'")] =
            "prompt_lookup",
            draft_model: Annotated[Optional[str], typer.Option(
                help="registry ref of a draft model sharing the tokenizer")] = None) -> None:
    """Run the OpenAI-compatible gateway in front of the swarm."""
    from serve.gateway.server import GatewayConfig, run_gateway

    version_id, directory, manifest = _checkout(
        model, "head", lambda m: m.small_files() + m.shared_files())
    draft_dir = None
    if draft_model:
        draft_dir = _checkout(draft_model, "full", lambda m: sorted(m.files))[1]
    run_gateway(GatewayConfig(directory=directory, version_id=version_id,
                              model_name=manifest.name, tracker_url=tracker, port=port,
                              return_port=return_port, return_url=return_url,
                              api_keys=set(api_key or []), chain=not naive,
                              wire_dtype=wire_dtype, timeout_s=timeout,
                              drafter=None if drafter == "off" else drafter,
                              draft_model_dir=draft_dir))


def relay(routes: Annotated[list[str], typer.Argument(help="LISTEN:TARGET port pairs")],
          delay_ms: Annotated[float, typer.Option()] = 10.0,
          delay_file: Annotated[Optional[Path], typer.Option(
              help="file holding the delay in ms, re-read while running")] = None) -> None:
    """Relay loopback ports with a one-way delay each way (latency emulation)."""
    from serve.relay import run_relays

    run_relays([tuple(int(p) for p in r.split(":")) for r in routes], delay_ms, delay_file)


def up(nodes: int = 3, model: str = "production", port: int = 8000, delay_ms: float = 0.0,
       api_key: Annotated[Optional[list[str]], typer.Option("--api-key")] = None) -> None:
    """Start a local swarm (tracker, NODES nodes, gateway) and serve until Ctrl-C."""
    import time

    from serve.up import LocalSwarm, SwarmSpec

    cfg = _cfg()
    client = cfg.client()
    layers = client.manifest(client.resolve(model)).num_layers
    swarm = LocalSwarm(SwarmSpec(model=model, nodes=nodes, port=port, delay_ms=delay_ms,
                                 api_keys=list(api_key or [])), cfg.home, layers)
    typer.echo(f"starting tracker, {nodes} nodes and the gateway (logs: {swarm.log_dir})…")
    swarm.start()
    typer.echo(f"swarm ready: OPENAI_BASE_URL={swarm.base_url}/v1  (Ctrl-C stops it)")
    try:
        while all(p.poll() is None for p in swarm.procs.values()):
            time.sleep(1)
        typer.echo("a swarm process exited; stopping", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        swarm.stop()
        typer.echo("stopped")


bench_app = typer.Typer(help="Benchmarks: programs that write JSON and a PNG plot.",
                        no_args_is_help=True)


@bench_app.command("swarm")
def bench_swarm(model: str = "production", nodes: int = 3,
                delays: Annotated[str, typer.Option(help="one-way ms per hop")] = "0,5,10,20",
                concurrency: str = "1,4,16", tokens: int = 32, prompts: str = "128,512",
                out: Path = Path("bench-out")) -> None:
    """Swarm vs single-process generate vs naive mode, across link delays."""
    import json

    from flows.cli import reports_errors
    from serve.bench import SwarmBenchConfig, run_swarm_bench

    cfg = SwarmBenchConfig(model=model, nodes=nodes,
                           delays_ms=[float(x) for x in delays.split(",")],
                           concurrency=[int(x) for x in concurrency.split(",")],
                           decode_tokens=tokens, prompt_lengths=[int(x) for x in prompts.split(",")],
                           out_dir=out)
    report = reports_errors(run_swarm_bench)(cfg, _cfg())
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {out / 'swarm.json'} and {out / 'swarm.png'}")


def register(app: typer.Typer) -> None:
    from flows.cli import reports_errors

    for func in (tracker, node, gateway, relay, up):
        app.command(func.__name__)(reports_errors(func))
    app.add_typer(bench_app, name="bench")
