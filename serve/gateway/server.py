"""Assemble and run a gateway process: per-version runtimes (head weights, pipeline, engine,
verifier), the HTTP API, and, with a channel watch, the rollout of new versions.

Rollout at the gateway: when the watched channel's verified head names a new version, the gateway
fetches that version's head files (and a full copy when it checks fingerprints), builds a runtime
beside the current one, and waits until the swarm can route that version (nodes load it at their
own pace). Only then do new requests start on it; requests already running finish on the version
they started with, and a retired runtime is closed once it has none left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from registry.signing import SigningKey
from serve.config import GatewayConfig
from serve.policy import RoutingPolicies
from serve.rollout import VersionSet, Watcher
from serve.rollout import follow as follow_channel
from serve.transport import advertised_host

if TYPE_CHECKING:
    from serve.gateway.api import GatewayState, Runtime

log = logging.getLogger("shoal.gateway")


def build_runtime(cfg: GatewayConfig, version_id: str, directory: Path,
                  trusted_dir: Path | None, draft_model_dir: Path | None = None, *,
                  first: bool = True, key: SigningKey | None = None) -> "Runtime":
    """Head, pipeline, engine and verifier for one version (the pipeline is not started yet).

    The first runtime answers on the configured return port / URL (a relay may sit in front);
    runtimes added by a rollout get a port of their own on the same advertised host."""
    from serve.discovery import TrackerDiscovery
    from serve.gateway.api import Runtime
    from serve.gateway.engine import Engine
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline

    head = Head(directory)
    key = key or SigningKey.generate("gateway")
    if cfg.dht is not None:
        from serve.dht_discovery import DhtDiscovery, peer_for

        discovery = DhtDiscovery(peer_for(cfg.dht, cfg.host), key=key,
                                 trusted_verdict_keys=cfg.trusted_verdict_keys)
    else:
        discovery = TrackerDiscovery(cfg.tracker_url, key=key,
                                     trusted_verdict_keys=cfg.trusted_verdict_keys)
    pipeline = Pipeline(discovery, head.num_layers, version_id,
                        host=cfg.host, return_port=cfg.return_port if first else 0,
                        return_url=cfg.return_url if first else advertised_host(cfg.return_url),
                        timeout_s=cfg.timeout_s, wire_dtype=cfg.wire_dtype, chain=cfg.chain,
                        key=key, tls=cfg.tls)
    runtime = Runtime(version_id, Engine(head, pipeline, build_drafters(cfg, draft_model_dir),
                                         cfg.drafter))
    if cfg.verify:
        import json

        from registry.manifest import Manifest
        from serve.gateway.verifier import Verifier

        envelope = json.loads((directory / "manifest.json").read_text())
        runtime.verifier = Verifier(pipeline, Manifest.model_validate(envelope["signed"]), head,
                                    trusted_dir, cfg.verifier)
        pipeline.gate = runtime.verifier.admits
        pipeline.mirror, pipeline.settle = runtime.verifier.mirror, runtime.verifier.settle
        pipeline.on_evidence = runtime.verifier.on_evidence
    return runtime


async def start_runtime(runtime: "Runtime") -> None:
    await runtime.engine.pipeline.start()
    if runtime.verifier is not None:
        runtime.tasks.append(asyncio.create_task(runtime.verifier.run()))


async def stop_runtime(runtime: "Runtime") -> None:
    for task in runtime.tasks:
        task.cancel()
    await runtime.engine.pipeline.stop()


def build_app(cfg: GatewayConfig, key: SigningKey | None = None, erasure_hooks=()):
    """The gateway's FastAPI app. `key` signs everything the gateway sends to nodes and its
    verdicts (None: a new key for this process)."""
    from serve.gateway.api import GatewayState, create_app

    key = key or SigningKey.generate("gateway")
    first = build_runtime(cfg, cfg.version_id, cfg.directory, cfg.trusted_dir,
                          cfg.draft_model_dir, key=key)
    state = GatewayState(VersionSet(cfg.version_id, first), cfg.model_name, cfg.api_keys)
    state.policies = RoutingPolicies(cfg.routing_policy)
    if cfg.traces_dir is not None:
        from traces.store import TraceStore, TraceStoreConfig

        state.traces = TraceStore(TraceStoreConfig(uri=str(cfg.traces_dir / "lancedb"),
                                                   log_dir=cfg.traces_dir / "log"))
        # what others derived from the traces (the CLI passes curation's datasets and cache),
        # so an erasure through the API removes it too
        state.traces.erasure_hooks.extend(erasure_hooks)
    from serve.gateway.drafting import attach

    consent = attach(state.traces, first)  # the suffix index learns only what consent allows
    if cfg.state_dir is not None:
        open_durable_state(cfg, state)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await start_runtime(first)
        if consent is not None:
            first.tasks.append(asyncio.create_task(consent.run()))
        if state.traces is not None:
            state.traces.start()  # replays what a crash left in the durable log
        watcher = asyncio.create_task(follow(cfg, state, key)) if cfg.watch else None
        durable = [asyncio.create_task(state.batches.run()),
                   asyncio.create_task(state.meter.run())] if state.meter is not None else []
        yield
        if watcher is not None:
            watcher.cancel()
        for task in durable:
            task.cancel()
        await asyncio.gather(*durable, return_exceptions=True)
        if state.traces is not None:
            state.traces.stop()
        for runtime in list(state.versions.items.values()):
            await stop_runtime(runtime)

    app = create_app(state, lifespan=lifespan)
    from serve.gateway.dashboard.routes import router as dashboard_router

    app.include_router(dashboard_router(state, cfg.dashboard))
    return app


def open_durable_state(cfg: GatewayConfig, state: "GatewayState") -> None:
    """The batch store, its scheduler and the usage meter, in `<state_dir>/gateway.db`."""
    from serve.gateway.batches import BatchStore
    from serve.gateway.scheduler import Scheduler
    from serve.gateway.statedb import StateDB
    from serve.gateway.usage import Meter

    db = StateDB(cfg.state_dir / "gateway.db")
    state.meter = Meter(db)
    state.batches = Scheduler(state, BatchStore(db), cfg.batch)
    for runtime in state.versions.items.values():
        meter_runtime(state, runtime)


def meter_runtime(state: "GatewayState", runtime: "Runtime") -> None:
    """Count what `runtime`'s nodes computed (accepted receipts) and how their checks went;
    let the batch scheduler hold batch lines while interactive requests run."""
    if state.meter is None:
        return
    runtime.engine.pipeline.on_receipts = state.meter.receipts
    if state.batches is not None:
        runtime.engine.pipeline.before_traverse = state.batches.hold
    if runtime.verifier is not None:
        runtime.verifier.on_verdict = state.meter.check


async def follow(cfg: GatewayConfig, state: "GatewayState", key: SigningKey) -> None:
    """Follow the channel (`serve.rollout.follow`): build a runtime for each new head, switch new
    requests to it once the swarm can route that version, close old runtimes once drained."""
    from serve.exceptions import NoRoute

    watcher = Watcher(cfg.watch)
    state.rollout = {"channel": watcher.state, "switches": []}

    async def load(version: str) -> "Runtime":
        from serve.gateway.drafting import attach

        runtime = await asyncio.to_thread(_prepare, cfg, watcher, version, key)
        meter_runtime(state, runtime)
        consent = await asyncio.to_thread(attach, state.traces, runtime)
        await start_runtime(runtime)
        if consent is not None:
            runtime.tasks.append(asyncio.create_task(consent.run()))
        return runtime

    async def ready(version: str) -> bool:
        try:
            await state.versions[version].engine.pipeline.route()
        except NoRoute:
            return False  # nodes are still loading it: keep the current version
        return True

    async def unload(_version: str, runtime: "Runtime") -> None:
        await stop_runtime(runtime)

    def on_switch(old: str, new: str) -> None:
        state.rollout["switches"].append({"from": old, "to": new, "at": time.time()})

    await follow_channel(
        watcher, state.versions, load=load, ready=ready,
        in_use=lambda: {v for v, rt in state.versions.items.items() if rt.inflight},
        unload=unload, on_error=lambda error: state.rollout.update(error=error),
        on_switch=on_switch, each_step=lambda: _pair_draft(watcher, state))


async def _pair_draft(watcher, state: "GatewayState") -> None:
    """Give the current runtime the draft model promoted on `<channel>-draft` for its version.

    Drafts roll out like targets: signed, verified, fetched once; a draft is used only with the
    version its lineage names (`draft_for`), so a new target never runs with a stale draft."""
    from serve.drafters import make_drafter

    from serve.drafters import add_compositions

    channel = f"{watcher.watch.channel}-draft"
    runtime = state.runtime()
    try:
        if not watcher.client.has_channel(channel):
            return
        record = await asyncio.to_thread(watcher.client.channel, channel)
        manifest = await asyncio.to_thread(watcher.client.manifest, record.version)
    except Exception as exc:  # an unverifiable draft is simply not used
        state.rollout["draft"] = {"channel": channel, "ok": False, "error": str(exc)}
        return
    state.rollout["draft"] = {"channel": channel, "ok": True, "version": record.version,
                              "draft_for": manifest.lineage.draft_for}
    if manifest.lineage.draft_for != runtime.version_id or runtime.draft == record.version:
        return
    directory = await asyncio.to_thread(watcher.checkout, record.version, "full")
    drafter = await asyncio.to_thread(make_drafter, "draft_model", directory=directory)
    runtime.engine.drafters["draft_model"] = drafter
    add_compositions(runtime.engine.drafters)  # prompt_lookup+draft_model, from the next request
    runtime.draft = record.version
    log.info("draft %s paired with %s", record.version[:19], runtime.version_id[:19])


def _prepare(cfg: GatewayConfig, watcher, version: str, key: SigningKey) -> "Runtime":
    """Check out what the gateway needs of `version` (verified) and build its runtime."""
    full = cfg.trusted_dir is not None
    directory = watcher.checkout(version, "full" if full else "head")
    return build_runtime(cfg, version, directory, directory if full else None, first=False,
                         key=key)


def build_drafters(cfg: GatewayConfig, draft_model_dir: Path | None = None) -> dict:
    from serve.drafters import add_compositions, make_drafter

    drafters = {"prompt_lookup": make_drafter("prompt_lookup"), "suffix": make_drafter("suffix")}
    if draft_model_dir is not None:
        drafters["draft_model"] = make_drafter("draft_model", directory=draft_model_dir)
    add_compositions(drafters)
    if cfg.drafter is not None and cfg.drafter not in drafters:
        raise ValueError(f"default drafter {cfg.drafter!r} is not available "
                         f"({', '.join(drafters)})")
    return drafters


def run_gateway(cfg: GatewayConfig, key: SigningKey | None = None, erasure_hooks=()) -> None:
    """Serve the gateway; `erasure_hooks` (`traces.store.TraceStore.erasure_hooks`) erase what
    was derived from its trace store's rows elsewhere."""
    import uvicorn

    uvicorn.run(build_app(cfg, key, erasure_hooks), host=cfg.host, port=cfg.port,
                log_level="warning")
