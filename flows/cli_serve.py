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


def _checkout(ref: str, role: str, span: tuple[int, int] | None = None
              ) -> tuple[str, Path, object]:
    """Resolve `ref` in the registry and fetch + verify what `role` needs of it."""
    cfg = _cfg()
    client = cfg.client()
    version_id = client.resolve(ref)
    directory, manifest = client.checkout_role(version_id, cfg.models_dir, role, span)
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
         memory_budget_mb: float = 2048.0, idle_timeout: float = 300.0,
         watch: Annotated[Optional[str], typer.Option(
             help="follow this channel and roll out its new versions")] = None,
         watch_poll: float = 2.0, drain_grace: float = 5.0) -> None:
    """Serve layers START:END of a verified registry version."""
    from serve.node import run_node

    config = node_config(model, layers, port, tracker, announce_url, threads, memory_budget_mb,
                         idle_timeout)
    config.watch = _watch(watch, watch_poll, drain_grace)
    run_node(config)


def _watch(channel: str | None, poll_s: float, grace_s: float):
    if not channel:
        return None
    from serve.rollout import ChannelWatch

    cfg = _cfg()
    return ChannelWatch(channel=channel, registry_url=cfg.registry_url, trust_dir=cfg.trust_dir,
                        models_dir=cfg.models_dir, poll_s=poll_s, drain_grace_s=grace_s)


def node_config(model: str, layers: str, port: int, tracker: str | None = None,
                announce_url: str | None = None, threads: int | None = None,
                memory_budget_mb: float = 2048.0, idle_timeout: float = 300.0):
    """Resolve `model`, fetch and verify the span's files, and describe the node."""
    from serve.node import NodeConfig

    try:
        start, end = (int(x) for x in layers.split(":"))
    except ValueError:
        raise typer.BadParameter(f"--layers {layers!r}: expected START:END") from None
    version_id, directory, _ = _checkout(model, "span", (start, end))
    return NodeConfig(directory=directory, start=start, end=end, version_id=version_id,
                      port=port, announce_url=announce_url, tracker_url=tracker, threads=threads,
                      memory_budget_bytes=int(memory_budget_mb * 2**20),
                      idle_timeout_s=idle_timeout)


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
                help="registry ref of a draft model sharing the tokenizer")] = None,
            verify: Annotated[bool, typer.Option(help="live-weight proofs of every node")] = True,
            fingerprints: Annotated[bool, typer.Option(
                help="canary outputs checked against a trusted copy (needs all layers)")] = True,
            verdict_log: Optional[Path] = None,
            verify_interval: Annotated[float, typer.Option(
                help="mean seconds between checks of an established node")] = 30.0,
            verify_new_interval: Annotated[float, typer.Option(
                help="mean seconds between checks while a node is new")] = 2.0,
            proof_deadline: float = 1.0,
            traces: Annotated[Optional[Path], typer.Option(
                help="trace store directory: accounts, consent, capture")] = None,
            watch: Annotated[Optional[str], typer.Option(
                help="follow this channel: new requests move to its new versions")] = None,
            watch_poll: float = 2.0, drain_grace: float = 5.0) -> None:
    """Run the OpenAI-compatible gateway in front of the swarm."""
    from serve.gateway.server import GatewayConfig, run_gateway

    version_id, directory, manifest = _checkout(model, "head")
    draft_dir = trusted_dir = None
    if draft_model:
        draft_dir = _checkout(draft_model, "full")[1]
    if verify and fingerprints:
        trusted_dir = _checkout(model, "full")[1]
    from serve.gateway.verifier import VerifierConfig

    verifier_cfg = VerifierConfig(log_path=verdict_log or _cfg().home / "run" / "verdicts.jsonl",
                                  interval_s=verify_interval, new_interval_s=verify_new_interval,
                                  deadline_s=proof_deadline)
    run_gateway(GatewayConfig(directory=directory, version_id=version_id,
                              model_name=manifest.name, tracker_url=tracker, port=port,
                              return_port=return_port, return_url=return_url,
                              api_keys=set(api_key or []), chain=not naive,
                              wire_dtype=wire_dtype, timeout_s=timeout,
                              drafter=None if drafter == "off" else drafter,
                              draft_model_dir=draft_dir, verify=verify, trusted_dir=trusted_dir,
                              verifier=verifier_cfg, traces_dir=traces,
                              watch=_watch(watch, watch_poll, drain_grace)))


def relay(routes: Annotated[list[str], typer.Argument(help="LISTEN:TARGET port pairs")],
          delay_ms: Annotated[float, typer.Option()] = 10.0,
          delay_file: Annotated[Optional[Path], typer.Option(
              help="file holding the delay in ms, re-read while running")] = None) -> None:
    """Relay loopback ports with a one-way delay each way (latency emulation)."""
    from serve.relay import run_relays

    run_relays([tuple(int(p) for p in r.split(":")) for r in routes], delay_ms, delay_file)


def up(nodes: int = 3, model: str = "production", port: int = 8000, delay_ms: float = 0.0,
       api_key: Annotated[Optional[list[str]], typer.Option("--api-key")] = None,
       traces: Annotated[bool, typer.Option(
           help="trace store in $SHOAL_HOME/traces (its API keys replace --api-key)")] = False
       ) -> None:
    """Start a local swarm (tracker, NODES nodes, gateway) and serve until Ctrl-C."""
    import time

    from serve.up import LocalSwarm, SwarmSpec

    cfg = _cfg()
    client = cfg.client()
    layers = client.manifest(client.resolve(model)).num_layers
    swarm = LocalSwarm(SwarmSpec(model=model, nodes=nodes, port=port, delay_ms=delay_ms,
                                 api_keys=list(api_key or []), traces=traces), cfg.home, layers)
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


def verify(node_url: Annotated[str, typer.Option("--node", help="ws://host:port of the node")],
           model: Annotated[str, typer.Option(help="the version the node claims to serve")] =
           "production",
           fingerprint: bool = True, challenges: int = 3, deadline: float = 1.0) -> None:
    """Challenge one node: live-weight proofs (and a canary fingerprint) against the registry."""
    import asyncio

    from serve.discovery import StaticDiscovery
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier, VerifierConfig
    from serve.discovery import NodeInfo
    from serve import wire

    version_id, directory, manifest = _checkout(model, "full" if fingerprint else "head")
    head = Head(directory)

    async def run() -> bool:
        pipeline = Pipeline(StaticDiscovery([]), head.num_layers, version_id)
        await pipeline.start()
        try:
            _, info = await pipeline.ping(wire.Hop("?", node_url, 0, 1))
            node = NodeInfo.model_validate({**info, "url": node_url})
            if node.version != version_id:
                typer.echo(f"FAIL node serves {node.version[:19]}…, not {version_id[:19]}…")
                return False
            verifier = Verifier(pipeline, manifest, head, directory if fingerprint else None,
                                VerifierConfig(deadline_s=deadline))
            ok = True
            for i in range(challenges):
                for v in await verifier.check(node, fingerprint=fingerprint and i == 0):
                    typer.echo(f"{'PASS' if v.ok else 'FAIL'} {v.kind:11} {v.check or ''} "
                               f"{v.detail}")
                    ok &= v.ok
            return ok
        finally:
            await pipeline.stop()

    if not asyncio.run(run()):
        raise typer.Exit(1)


def status(tracker: Annotated[str, typer.Option()] = "http://127.0.0.1:7000",
           gateway: Annotated[Optional[str], typer.Option(
               help="gateway URL: adds its rollout state")] = None) -> None:
    """Nodes (span, versions, trust, channel watch, load), the gateway's rollout, and the channel
    heads, in one view."""
    import httpx
    from rich.console import Console
    from rich.table import Table

    from registry.manifest import short_id

    console = Console()
    table = Table(title=f"nodes at {tracker}")
    for col in ("node", "layers", "offers", "loaded", "trust", "channel", "sessions",
                "batches", "ms/token/layer"):
        table.add_column(col)
    try:
        nodes = httpx.get(f"{tracker}/nodes", timeout=5).json()
    except httpx.HTTPError as exc:
        nodes = []
        console.print(f"[red]tracker unreachable: {exc}[/red]")
    for n in sorted(nodes, key=lambda n: (n["start"], n["node_id"])):
        st = n.get("stats", {})
        watch = n.get("channel") or {}
        channel = "-" if not watch else (f"{watch['channel']} #{watch.get('sequence')}"
                                         if watch.get("ok") else
                                         f"[red]{watch['channel']}: {watch.get('error')}[/red]")
        table.add_row(n["node_id"], f"{n['start']}:{n['end']}", short_id(n["version"]),
                      " ".join(short_id(v) for v in n.get("versions") or [n["version"]]),
                      n["status"], channel, str(n["sessions"]), str(st.get("batches", 0)),
                      f"{n['ms_per_token_layer']:.2f}")
    console.print(table)
    if gateway:
        try:
            r = httpx.get(f"{gateway}/v1/rollout", timeout=5).json()
            loaded = ", ".join(f"{short_id(v)} ({d['inflight']} in flight"
                               f"{', retired' if d['retired'] else ''})"
                               for v, d in r["versions"].items())
            console.print(f"gateway {gateway}: new requests → {short_id(r['current'])}; "
                          f"loaded: {loaded}")
        except httpx.HTTPError as exc:
            console.print(f"[red]gateway unreachable: {exc}[/red]")
    cfg = _cfg()
    client = cfg.client()
    heads = Table(title=f"channels at {cfg.registry_url}")
    for col in ("channel", "sequence", "version", "promoted", "note"):
        heads.add_column(col)
    for name in client.store.list("channels"):
        try:
            r = client.channel(name)
            heads.add_row(name, str(r.sequence), short_id(r.version), r.promoted_at, r.note)
        except Exception as exc:  # show a refused channel instead of hiding it
            heads.add_row(name, "-", "-", "-", f"REFUSED: {exc}")
    console.print(heads)


bench_app = typer.Typer(help="Benchmarks: programs that write JSON and a PNG plot.",
                        no_args_is_help=True)


@bench_app.command("swarm")
def bench_swarm(model: str = "production", nodes: int = 3,
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
    import json

    from flows.cli import reports_errors
    from serve.bench import SwarmBenchConfig, run_swarm_bench

    cfg = SwarmBenchConfig(model=model, nodes=nodes,
                           delays_ms=[float(x) for x in delays.split(",")],
                           concurrency=[int(x) for x in concurrency.split(",")],
                           decode_tokens=tokens, prompt_lengths=[int(x) for x in prompts.split(",")],
                           out_dir=out, drafters=[d for d in drafters.split(",") if d]
                           + (["draft_model"] if draft_model else []),
                           draft_model=draft_model, spec_tokens=spec_tokens, proofs=proofs)
    report = reports_errors(run_swarm_bench)(cfg, _cfg())
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {out / 'swarm.json'} and {out / 'swarm.png'}")


@bench_app.command("registry")
def bench_registry(model: str = "production", span: int = 10, import_default: bool = True,
                   out: Path = Path("bench-out")) -> None:
    """Hash throughput, 10-layer span verification, and the default import's time and memory."""
    import json

    from flows.cli import reports_errors
    from registry.bench import run_registry_bench

    report = reports_errors(run_registry_bench)(_cfg(), model, out, span, import_default)
    typer.echo(json.dumps(report, indent=2))


def register(app: typer.Typer) -> None:
    from flows.cli import reports_errors

    for func in (tracker, node, gateway, relay, up, verify, status):
        app.command(func.__name__)(reports_errors(func))
    app.add_typer(bench_app, name="bench")  # cli_traces adds `bench traces` to it
