"""`shoal verify`, `shoal status` and `shoal usage`: the commands that inspect a running swarm
(one node's proofs, the nodes and rollout as a gateway sees them, metered usage). The commands
that run its processes are in `flows.cli.serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.base import DEFAULT_MODEL, command, config, fail
from flows.cli.serve import GATEWAY, HOST_HELP, TRACKER_URL, VERIFIER, _checkout, _dht
from serve.config import VerifierConfig

cli = typer.Typer()
"""What this module adds to `shoal`: its top-level commands."""


# inspection -------------------------------------------------------------------------------------

@command(cli)
def verify(node_url: Annotated[str, typer.Option(
               "--node", help="ws://host:port or wss://host:port of the node")],
           model: Annotated[str, typer.Option(help="the version the node claims to serve")] =
           DEFAULT_MODEL,
           node_key: Annotated[str, typer.Option(
               help="the node's public key (hex, `public_key` of its record): a wss:// node "
               "must present it")] = "",
           host: Annotated[str, typer.Option(
               help=HOST_HELP + " (the port the node answers canaries on)")] = GATEWAY["host"],
           advertise: Annotated[Optional[str], typer.Option(
               help="address the node dials to answer canaries: HOST, HOST:PORT or a ws(s):// "
               "URL (default: --host)")] = None,
           fingerprint: bool = True, challenges: int = 3,
           deadline: float = VERIFIER["deadline_s"]) -> None:
    """Challenge one node: live-weight proofs (and a canary fingerprint) against the registry."""
    import asyncio

    from serve import wire
    from serve.discovery import StaticDiscovery
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier
    from serve.discovery import NodeInfo
    from serve.exceptions import RecordRejected
    from serve.records import verify_record

    version_id, directory, manifest = _checkout(model, "full" if fingerprint else "head")
    head = Head(directory)

    async def run() -> bool:
        pipeline = Pipeline(StaticDiscovery([]), head.num_layers, version_id, host=host,
                            return_url=advertise)
        await pipeline.start()
        try:
            _, info = await pipeline.ping(wire.Hop("?", node_url, 0, 1, node_key))
            try:  # the node's own signed record: its id must be the hash of its key
                record = verify_record(info)
            except RecordRejected as exc:
                typer.echo(f"FAIL the node's record is refused: {exc}")
                return False
            node = NodeInfo.model_validate({**record.model_dump(), "url": node_url})
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


def _dht_view(join: list[str]) -> tuple[str, list[dict]]:
    """One verified lookup of the nodes in the DHT swarm `--join` names, as a gateway reads
    them: (where, node dicts like the tracker's)."""
    import asyncio
    import time

    from serve.dht_discovery import look_once

    dht = _dht(join, 0)
    t0 = time.monotonic()
    nodes, peers = asyncio.run(look_once(dht))
    where = (f"the DHT of swarm {dht.invite.swarm!r} ({peers} peers, lookup "
             f"{time.monotonic() - t0:.1f} s)")
    return where, [n.model_dump() for n in nodes]


@command(cli)
def status(tracker: Annotated[str, typer.Option()] = TRACKER_URL,
           gateway: Annotated[Optional[str], typer.Option(
               help="gateway URL: adds its rollout state")] = None,
           join: Annotated[Optional[list[str]], typer.Option(
               "--join", help="read the nodes from this swarm's DHT instead of the tracker "
               "(as for `shoal node --join`), each record verified")] = None) -> None:
    """Nodes (span, versions, trust, channel watch, load), the gateway's rollout, and the channel
    heads, in one view."""
    import httpx
    from rich.console import Console
    from rich.table import Table

    from registry.manifest import short_id

    console = Console()
    if join:
        where, nodes = _dht_view(join)
    else:
        where = tracker
        try:
            nodes = httpx.get(f"{tracker}/nodes", timeout=5).json()
        except httpx.HTTPError as exc:
            nodes = []
            console.print(f"[red]tracker unreachable: {exc}[/red]")
    table = Table(title=f"nodes at {where}")
    for col in ("node", "layers", "offers", "loaded", "trust", "channel", "sessions",
                "batches", "ms/token/layer"):
        table.add_column(col)
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
            ingestion = httpx.get(f"{gateway}/metrics", timeout=5).json().get("trace_ingestion")
            if ingestion:
                from traces.ingest import describe

                console.print(describe(ingestion))
        except httpx.HTTPError as exc:
            console.print(f"[red]gateway unreachable: {exc}[/red]")
    cfg = config()
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


@command(cli)
def usage(gateway: Annotated[str, typer.Option(help="gateway URL")] =
          f"http://127.0.0.1:{GATEWAY['port']}",
          api_key: Annotated[str, typer.Option(
              help="your key (a maintainer's key shows every key and node)")] = "",
          format: Annotated[str, typer.Option(help="json or csv")] = "json",
          out: Annotated[Optional[Path], typer.Option(help="write here instead of stdout")]
          = None) -> None:
    """Metered usage from the gateway (GET /v1/usage): tokens, requests and batch lines per key;
    positions computed and checks per node. JSON or CSV, for settlement."""
    import json

    import httpx

    if format not in ("json", "csv"):
        fail(f"--format {format!r}: expected json or csv")
    try:
        r = httpx.get(f"{gateway}/v1/usage", params={"format": format}, timeout=30,
                      headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    except httpx.HTTPError as exc:
        fail(f"gateway {gateway} unreachable: {exc}")
    if r.status_code != 200:
        fail(f"gateway answered {r.status_code}: {r.text[:300]}")
    text = r.text if format == "csv" else json.dumps(r.json(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")
