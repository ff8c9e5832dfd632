"""`shoal chat` and the commands that run swarm processes: `tracker`, `node`, `gateway`, `relay`,
`nat-relay`, `up` (the commands that inspect them are in `flows.cli.inspection`).

Option defaults come from serve/'s configs (`serve.config`: pydantic, no torch), so a default is
written down once, there; the commands turn the options into those configs and hand them to
serve/. Everything else serve/ needs is imported when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from flows.cli.base import DEFAULT_MODEL, command, config, fail
from serve.config import (BatchConfig, ChannelWatch, DashboardConfig, DhtConfig, GatewayConfig,
                          NodeConfig, TrackerConfig, VerifierConfig, defaults)

if TYPE_CHECKING:
    from registry.manifest import Manifest

cli = typer.Typer()
"""What this module adds to `shoal`: its top-level commands."""

GATEWAY = defaults(GatewayConfig)
TRACKER = defaults(TrackerConfig)
NODE = defaults(NodeConfig)
VERIFIER = defaults(VerifierConfig)
WATCH = defaults(ChannelWatch)
BATCH = defaults(BatchConfig)
TRACKER_PORT = TRACKER["port"]
"""Port `shoal tracker` listens on unless told otherwise."""
TRACKER_URL = f"http://127.0.0.1:{TRACKER_PORT}"
"""Where the commands look for the tracker unless told otherwise."""
MB = 2**20
HOST_HELP = "address to bind (0.0.0.0: every interface; then give --advertise)"
TLS_HELP = ("hop transport: auto (wss:// unless bound to loopback), on (always wss://), off "
            "(plain ws://, also to other hosts)")


def _tls(mode: str) -> str:
    if mode not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--tls {mode!r}: expected auto, on or off")
    return mode


FINGERPRINT_HELP = ("the registry's fingerprint (`shoal registry show`): its first root is "
                    "pinned only if it matches, never on first use (default: the --join "
                    "invite's)")


def _pin_root(fingerprint: str | None) -> None:
    """Pin the registry's root in this home's trust directory after checking it against
    `fingerprint`, before anything else reads the registry (None: what is pinned already, or
    trust on first use)."""
    if fingerprint:
        from registry.client import RegistryClient
        from registry.exceptions import VerificationError

        cfg = config()
        try:
            RegistryClient(cfg.store(), cfg.trust_dir, fingerprint=fingerprint).policy()
        except VerificationError as exc:
            fail(f"registry {cfg.registry_url}: {exc}")
        except Exception as exc:  # unreachable, refused, not a registry: nothing is pinned
            fail(f"cannot read the registry at {cfg.registry_url} to pin its root "
                 f"({type(exc).__name__}: {exc})")


def _identity(path: Path | None):
    """The key in `path` (created if absent), or None for a new key per process."""
    if path is None:
        return None
    from serve.identity import load_or_create

    return load_or_create(path, config().key_passphrase)


def _checkout(ref: str, role: str, span: tuple[int, int] | None = None
              ) -> tuple[str, Path, Manifest]:
    """Resolve `ref` in the registry and fetch + verify what `role` needs of it."""
    cfg = config()
    client = cfg.client()
    version_id = client.resolve(ref)
    directory, manifest = client.checkout_role(version_id, cfg.models_dir, role, span)
    return version_id, directory, manifest


def _watch(channel: str | None, poll_s: float, grace_s: float) -> ChannelWatch | None:
    if not channel:
        return None
    cfg = config()
    return ChannelWatch(channel=channel, registry_url=cfg.registry_url, trust_dir=cfg.trust_dir,
                        models_dir=cfg.models_dir, poll_s=poll_s, drain_grace_s=grace_s)


JOIN_HELP = ("a swarm invite (`shoal swarm invite`) or a DHT peer HOST:PORT to bootstrap from; "
             "repeatable. Bare addresses join the open swarm. Discovery then runs on the DHT, "
             "no tracker needed")


def _dht(join: list[str] | None, port: int) -> DhtConfig | None:
    """The DHT peer `--join` asks for (None without `--join`)."""
    if not join:
        return None
    from serve.exceptions import InviteError
    from serve.invite import join_invite

    try:
        return DhtConfig(invite=join_invite(join), port=port)
    except InviteError as exc:
        raise typer.BadParameter(f"--join: {exc}") from None


LAYERS_HELP = ("START:END (end exclusive), or 'auto': as many layers as --weights-budget-mb "
               "holds, where the swarm serves worst (serve/placement.py)")


def _auto_span(model: str, tracker: str | None, dht: DhtConfig | None,
               weights_budget_mb: float | None) -> str:
    """`--layers auto`: read the swarm (the DHT with `--join`, else the tracker), and choose
    the span of the layers that fit that raises its weakest throughput most."""
    import asyncio
    import os

    from serve.exceptions import ServeError
    from serve.placement import choose_span, layers_that_fit

    client = config().client()
    version_id = client.resolve(model)
    manifest = client.manifest(version_id)  # sizes from the signed manifest: nothing downloaded
    budget = (int(weights_budget_mb * MB) if weights_budget_mb else
              os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    try:
        length = layers_that_fit(manifest, budget)
        nodes = asyncio.run(_swarm_view(tracker, dht))
    except ServeError as exc:
        fail(f"--layers auto: {exc}")
    except Exception as exc:  # unreachable tracker or DHT: choosing blind would be a guess
        fail(f"--layers auto: cannot read the swarm ({type(exc).__name__}: {exc}); "
             "pass --layers START:END")
    serving = [n for n in nodes if version_id in (n.version, *n.versions)]
    start, end = choose_span(serving, manifest.num_layers, length)
    typer.echo(f"--layers auto: {start}:{end} ({length} of {manifest.num_layers} layers fit "
               f"{budget / MB:.0f} MiB; {len(serving)} nodes serve this version)", err=True)
    return f"{start}:{end}"


async def _swarm_view(tracker: str | None, dht: DhtConfig | None) -> list:
    """The nodes a gateway would see now, each record verified."""
    from serve.discovery import TrackerDiscovery
    from serve.exceptions import ServeError

    if dht is not None:
        from serve.dht_discovery import look_once

        return (await look_once(dht))[0]
    if not tracker:
        raise ServeError("no tracker and no --join to read the swarm from")
    reader = TrackerDiscovery(tracker)
    try:
        return await reader.nodes()
    finally:
        await reader.aclose()


def node_config(model: str, layers: str, port: int, tracker: str | None = NODE["tracker_url"],
                announce_url: str | None = NODE["announce_url"],
                threads: int | None = NODE["threads"],
                memory_budget_mb: float = NODE["memory_budget_bytes"] / MB,
                idle_timeout: float = NODE["idle_timeout_s"],
                gateway_keys: list[str] | None = None, host: str = NODE["host"],
                tls: str = NODE["tls"]) -> NodeConfig:
    """Resolve `model`, fetch and verify the span's files, and describe the node."""
    try:
        start, end = (int(x) for x in layers.split(":"))
    except ValueError:
        raise typer.BadParameter(f"--layers {layers!r}: expected START:END") from None
    version_id, directory, _ = _checkout(model, "span", (start, end))
    return NodeConfig(directory=directory, start=start, end=end, version_id=version_id,
                      port=port, host=host, tls=tls, announce_url=announce_url,
                      tracker_url=tracker, threads=threads,
                      memory_budget_bytes=int(memory_budget_mb * MB), idle_timeout_s=idle_timeout,
                      gateway_keys=set(gateway_keys or []))


# in-process -------------------------------------------------------------------------------------

@command(cli)
def chat(prompt: str, model: Annotated[str, typer.Option(help="name@channel or version")] =
         DEFAULT_MODEL, max_tokens: int = 64) -> None:
    """Answer PROMPT in-process from a verified checkout (the swarm's reference path)."""
    from serve.local import LocalModel

    _, directory = config().checkout(model)
    typer.echo(LocalModel.load(directory).chat([{"role": "user", "content": prompt}], max_tokens))


# swarm processes --------------------------------------------------------------------------------

@command(cli)
def tracker(port: Annotated[int, typer.Option()] = TRACKER_PORT,
            host: Annotated[str, typer.Option(help=HOST_HELP)] = TRACKER["host"],
            ttl: float = TRACKER["ttl_s"],
            verdict_key: Annotated[Optional[list[str]], typer.Option(
                "--verdict-key", help="public key (hex) allowed to post verdicts; repeatable; "
                "none: no verdicts are accepted")] = None,
            max_nodes: int = TRACKER["max_nodes"]) -> None:
    """Run the tracker that nodes announce to and gateways read."""
    from serve.tracker import run_tracker

    run_tracker(TrackerConfig(host=host, port=port, ttl_s=ttl, verdict_keys=set(verdict_key or []),
                              max_nodes=max_nodes))


@command(cli)
def node(model: Annotated[str, typer.Option(help="name@channel, channel or version")],
         port: Annotated[int, typer.Option()],
         layers: Annotated[str, typer.Option(help=LAYERS_HELP)] = "auto",
         weights_budget_mb: Annotated[Optional[float], typer.Option(
             help="memory for weights with --layers auto (default: half of what is free)")] =
         None,
         tracker: Annotated[Optional[str], typer.Option(help="tracker URL")] =
         NODE["tracker_url"],
         host: Annotated[str, typer.Option(help=HOST_HELP)] = NODE["host"],
         announce_url: Annotated[Optional[str], typer.Option(
             "--advertise", "--announce-url", help="address other hosts dial, signed into the "
             "node's record: HOST, HOST:PORT or a ws(s):// URL (default: --host)")] =
         NODE["announce_url"],
         tls: Annotated[str, typer.Option(help=TLS_HELP)] = NODE["tls"],
         via: Annotated[Optional[str], typer.Option(
             help="HOST:PORT of a NAT relay (`shoal nat-relay`) peers reach this node through, "
             "when it cannot accept connections (TLS end to end)")] = None,
         key: Annotated[Optional[Path], typer.Option(
             help="the node's identity key, NAME.pem (created, mode 0600, if absent): the node "
             "id survives restarts (default: a new key per process)")] = None,
         root_fingerprint: Annotated[Optional[str], typer.Option(help=FINGERPRINT_HELP)] =
         None,
         threads: Annotated[Optional[int], typer.Option(help="torch threads")] = NODE["threads"],
         memory_budget_mb: float = NODE["memory_budget_bytes"] / MB,
         idle_timeout: float = NODE["idle_timeout_s"],
         watch: Annotated[Optional[str], typer.Option(
             help="follow this channel and roll out its new versions")] = None,
         watch_poll: float = WATCH["poll_s"], drain_grace: float = WATCH["drain_grace_s"],
         gateway_key: Annotated[Optional[list[str]], typer.Option(
             "--gateway-key", help="public key (hex) of a gateway this node works for; "
             "repeatable (default: any gateway that signs its routes)")] = None,
         join: Annotated[Optional[list[str]], typer.Option("--join", help=JOIN_HELP)] = None,
         dht_port: Annotated[int, typer.Option(help="UDP port of this node's DHT peer "
                                               "(0: any)")] = 0) -> None:
    """Serve layers START:END of a verified registry version (or the span the swarm needs)."""
    from serve.node import run_node

    dht = _dht(join, dht_port)
    _pin_root(root_fingerprint or (dht.invite.registry if dht is not None else None))
    if layers == "auto":
        layers = _auto_span(model, tracker, dht, weights_budget_mb)
    node_cfg = node_config(model, layers, port, tracker, announce_url, threads, memory_budget_mb,
                           idle_timeout, gateway_key, host, _tls(tls))
    node_cfg.watch = _watch(watch, watch_poll, drain_grace)
    node_cfg.dht = dht
    if via:
        if tls == "off":
            fail("--via needs TLS: the relay must see only ciphertext")
        node_cfg.via = via
    run_node(node_cfg, key=_identity(key))


@command(cli)
def gateway(model: Annotated[str, typer.Option()] = DEFAULT_MODEL,
            tracker: Annotated[str, typer.Option()] = TRACKER_URL,
            port: Annotated[int, typer.Option()] = GATEWAY["port"],
            host: Annotated[str, typer.Option(
                help=HOST_HELP + " (the HTTP API and the return port)")] = GATEWAY["host"],
            return_port: int = GATEWAY["return_port"],
            return_url: Annotated[Optional[str], typer.Option(
                "--advertise", "--return-url", help="address last hops dial to answer, signed "
                "into tickets: HOST, HOST:PORT or a ws(s):// URL (default: --host)")] =
            GATEWAY["return_url"],
            tls: Annotated[str, typer.Option(help=TLS_HELP)] = GATEWAY["tls"],
            api_key: Annotated[Optional[list[str]], typer.Option("--api-key")] = None,
            key: Annotated[Optional[str], typer.Option(
                help="name of the key in $SHOAL_HOME/keys that signs routes and verdicts "
                "(default: a new key per process)")] = None,
            key_file: Annotated[Optional[Path], typer.Option(
                help="signing key file NAME.pem instead of --key (created, mode 0600, if "
                "absent)")] = None,
            root_fingerprint: Annotated[Optional[str], typer.Option(help=FINGERPRINT_HELP)] =
            None,
            trust_verdict_key: Annotated[Optional[list[str]], typer.Option(
                "--trust-verdict-key", help="public key (hex) of another gateway or maintainer "
                "whose verdicts evict here too; repeatable")] = None,
            naive: Annotated[bool, typer.Option(help="call nodes one by one (benchmarks)")] =
            not GATEWAY["chain"],
            wire_dtype: str = GATEWAY["wire_dtype"], timeout: float = GATEWAY["timeout_s"],
            drafter: Annotated[str, typer.Option(help="default drafter or 'off'")] =
            GATEWAY["drafter"] or "off",
            draft_model: Annotated[Optional[str], typer.Option(
                help="registry ref of a draft model sharing the tokenizer")] = None,
            verify: Annotated[bool, typer.Option(help="live-weight proofs of every node")] =
            GATEWAY["verify"],
            fingerprints: Annotated[bool, typer.Option(
                help="canary outputs checked against a trusted copy (needs all layers)")] = True,
            verdict_log: Optional[Path] = None,
            verify_interval: Annotated[float, typer.Option(
                help="mean seconds between checks of an established node")] =
            VERIFIER["interval_s"],
            verify_new_interval: Annotated[float, typer.Option(
                help="mean seconds between checks while a node is new")] =
            VERIFIER["new_interval_s"],
            proof_deadline: float = VERIFIER["deadline_s"],
            spot_check_sessions: Annotated[float, typer.Option(
                help="share of sessions secretly mirrored and audited (needs fingerprints' "
                "full copy)")] = VERIFIER["spot_check_sessions"],
            traces: Annotated[Optional[Path], typer.Option(
                help="trace store directory: accounts, consent, capture")] = None,
            watch: Annotated[Optional[str], typer.Option(
                help="follow this channel: new requests move to its new versions")] = None,
            watch_poll: float = WATCH["poll_s"], drain_grace: float = WATCH["drain_grace_s"],
            prefect_ui: Annotated[Optional[str], typer.Option(
                help="a Prefect server's UI URL: the dashboard lists and links its flow runs")]
            = None,
            state_dir: Annotated[Optional[Path], typer.Option(
                help="durable state: batch files and jobs, usage meter "
                "(default: $SHOAL_HOME/gateway)")] = None,
            batch_sessions: Annotated[int, typer.Option(
                help="batch lines at once while no interactive request runs")] =
            BATCH["max_sessions"],
            batch_busy_sessions: Annotated[int, typer.Option(
                help="batch lines that go on while interactive requests run")] =
            BATCH["busy_sessions"],
            join: Annotated[Optional[list[str]], typer.Option("--join", help=JOIN_HELP)] = None,
            dht_port: Annotated[int, typer.Option(help="UDP port of this gateway's DHT peer "
                                                  "(0: any)")] = 0) -> None:
    """Run the OpenAI-compatible gateway in front of the swarm (dashboard at /dashboard)."""
    from flows.erasure import erase_derived
    from registry.signing import load_key
    from serve.gateway.server import run_gateway

    cfg = config()
    if key and key_file:
        fail("give --key NAME or --key-file FILE, not both")
    signing_key = load_key(cfg.keys_dir, key, cfg.key_passphrase) if key else _identity(key_file)
    if root_fingerprint is None and join:
        root_fingerprint = _dht(join, 0).invite.registry  # the invite's registry, pinned
    _pin_root(root_fingerprint)
    version_id, directory, manifest = _checkout(model, "head")
    draft_dir = trusted_dir = None
    if draft_model:
        draft_dir = _checkout(draft_model, "full")[1]
    if verify and fingerprints:
        trusted_dir = _checkout(model, "full")[1]
    verifier = VerifierConfig(log_path=verdict_log or cfg.home / "run" / "verdicts.jsonl",
                              interval_s=verify_interval, new_interval_s=verify_new_interval,
                              deadline_s=proof_deadline,
                              spot_check_sessions=spot_check_sessions)
    run_gateway(GatewayConfig(directory=directory, version_id=version_id,
                              model_name=manifest.name, tracker_url=tracker, port=port,
                              dht=_dht(join, dht_port),
                              host=host, tls=_tls(tls),
                              return_port=return_port, return_url=return_url,
                              api_keys=set(api_key or []), chain=not naive,
                              wire_dtype=wire_dtype, timeout_s=timeout,
                              drafter=None if drafter == "off" else drafter,
                              draft_model_dir=draft_dir, verify=verify, trusted_dir=trusted_dir,
                              verifier=verifier, traces_dir=traces,
                              trusted_verdict_keys=set(trust_verdict_key or []),
                              watch=_watch(watch, watch_poll, drain_grace),
                              state_dir=state_dir or cfg.home / "gateway",
                              batch=BatchConfig(max_sessions=batch_sessions,
                                                busy_sessions=batch_busy_sessions),
                              dashboard=DashboardConfig(registry_url=cfg.registry_url,
                                                        trust_dir=cfg.trust_dir,
                                                        prefect_ui_url=prefect_ui)),
                key=signing_key, erasure_hooks=[erase_derived(cfg.home)] if traces else [])


@command(cli)
def relay(routes: Annotated[list[str], typer.Argument(help="LISTEN:TARGET port pairs")],
          delay_ms: Annotated[float, typer.Option()] = 10.0,
          delay_file: Annotated[Optional[Path], typer.Option(
              help="file holding the delay in ms, re-read while running")] = None) -> None:
    """Relay loopback ports with a one-way delay each way (latency emulation)."""
    from serve.relay import run_relays

    run_relays([tuple(int(p) for p in r.split(":")) for r in routes], delay_ms, delay_file)


@command(cli, "nat-relay")
def nat_relay(host: Annotated[str, typer.Option(help=HOST_HELP)] = "0.0.0.0",
              port: Annotated[int, typer.Option()] = 7300) -> None:
    """Relay connections to nodes behind NAT (`shoal node --via`), splicing TLS it cannot read."""
    from serve.nat_relay import RelayConfig, run_relay

    run_relay(RelayConfig(host=host, port=port))


@command(cli)
def up(nodes: int = 3, model: str = DEFAULT_MODEL, port: int = GATEWAY["port"],
       delay_ms: float = 0.0,
       api_key: Annotated[Optional[list[str]], typer.Option("--api-key")] = None,
       traces: Annotated[bool, typer.Option(
           help="trace store in $SHOAL_HOME/traces (its API keys replace --api-key)")] = False,
       watch: Annotated[Optional[str], typer.Option(
           help="channel to follow, rolling out each version it is promoted to (default: the "
                "channel --model names, e.g. production)")] = None,
       pin: Annotated[bool, typer.Option(
           "--pin", help="serve --model's version as it is now and follow no channel")] = False,
       watch_poll: float = WATCH["poll_s"],
       dht: Annotated[bool, typer.Option(
           "--dht", help="no tracker: the processes find each other on a new private DHT "
           "swarm")] = False) -> None:
    """Start a local swarm (tracker, NODES nodes, gateway) and serve until Ctrl-C or SIGTERM,
    which stop every process it started; a crashed node is reported and restarted."""
    from serve.up import LocalSwarm, SwarmSpec, serve_until_stopped

    cfg = config()
    client = cfg.client()
    layers = client.manifest(client.resolve(model)).num_layers
    if pin and watch:
        fail("give --watch CHANNEL or --pin, not both")
    named = model.rpartition("@")[2]
    follow = None if pin else (watch or (named if client.has_channel(named) else None))
    swarm = LocalSwarm(SwarmSpec(model=model, nodes=nodes, port=port, delay_ms=delay_ms,
                                 api_keys=list(api_key or []), traces=traces,
                                 key_passphrase=cfg.key_passphrase, watch=follow,
                                 watch_poll_s=watch_poll, dht=dht), cfg.home, layers)
    following = f"following {follow!r}" if follow else "pinned to its version"
    typer.echo(f"starting {'' if dht else 'tracker, '}{nodes} nodes and the gateway, {following} "
               f"(logs: {swarm.log_dir})…")
    status = serve_until_stopped(
        swarm, lambda line: typer.echo(line, err=True), on_ready=lambda: typer.echo(
            f"swarm ready: OPENAI_BASE_URL={swarm.base_url}/v1  (Ctrl-C stops it)"))
    typer.echo("stopped")
    raise typer.Exit(status)
