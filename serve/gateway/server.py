"""Assemble and run a gateway process: head weights, discovery, pipeline, engine, HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.gateway.verifier import VerifierConfig


@dataclass
class GatewayConfig:
    directory: Path
    """Verified checkout holding config, tokenizer and the shared (non-layer) shards."""
    version_id: str
    model_name: str
    tracker_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    return_port: int = 0
    return_url: str | None = None
    """Address last hops dial to answer (e.g. a latency relay in front of the return port)."""
    api_keys: set[str] = field(default_factory=set)
    timeout_s: float = 60.0
    wire_dtype: str = "float32"
    chain: bool = True
    drafter: str | None = "prompt_lookup"
    """Default drafter for requests that do not choose one (None: no speculation)."""
    draft_model_dir: Path | None = None
    """Verified checkout of a draft model; enables the `draft_model` drafter."""
    verify: bool = True
    """Challenge nodes with live-weight proofs (admission, then at random intervals)."""
    trusted_dir: Path | None = None
    """Verified full checkout for output fingerprints (None: proofs only)."""
    verifier: "VerifierConfig | None" = None
    traces_dir: Path | None = None
    """Trace store directory (LanceDB tables + durable log). None: static API keys, no capture."""


def build_app(cfg: GatewayConfig):
    from serve.discovery import TrackerDiscovery
    from serve.gateway.api import GatewayState, create_app
    from serve.gateway.engine import Engine
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline

    head = Head(cfg.directory)
    pipeline = Pipeline(TrackerDiscovery(cfg.tracker_url), head.num_layers, cfg.version_id,
                        host=cfg.host, return_port=cfg.return_port, return_url=cfg.return_url,
                        timeout_s=cfg.timeout_s, wire_dtype=cfg.wire_dtype, chain=cfg.chain)
    state = GatewayState(Engine(head, pipeline, build_drafters(cfg), cfg.drafter),
                         cfg.model_name, cfg.version_id, cfg.api_keys)
    if cfg.traces_dir is not None:
        from traces.store import TraceStore, TraceStoreConfig

        state.traces = TraceStore(TraceStoreConfig(uri=str(cfg.traces_dir / "lancedb"),
                                                   log_dir=cfg.traces_dir / "log"))
        if "suffix" in state.engine.drafters:
            seed_suffix_index(state.engine.drafters["suffix"], state.traces, head.tokenizer)
    if cfg.verify:
        import json

        from registry.manifest import Manifest
        from serve.gateway.verifier import Verifier

        envelope = json.loads((cfg.directory / "manifest.json").read_text())
        state.verifier = Verifier(pipeline, Manifest.model_validate(envelope["signed"]), head,
                                  cfg.trusted_dir, cfg.verifier)
        pipeline.gate = state.verifier.admits

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await pipeline.start()
        if state.traces is not None:
            state.traces.start()  # replays what a crash left in the durable log
        task = asyncio.create_task(state.verifier.run()) if state.verifier else None
        yield
        if task is not None:
            task.cancel()
        if state.traces is not None:
            state.traces.stop()
        await pipeline.stop()

    return create_app(state, lifespan=lifespan)


def seed_suffix_index(drafter, store, tokenizer, limit: int = 5000) -> int:
    """Teach the suffix drafter the completions the swarm served to consenting contributors."""
    rows = store.query(limit=limit)
    for row in rows:
        drafter.observe(tokenizer(row["completion"])["input_ids"])
    return len(rows)


def build_drafters(cfg: GatewayConfig) -> dict:
    from serve.drafters import make_drafter

    drafters = {"prompt_lookup": make_drafter("prompt_lookup"), "suffix": make_drafter("suffix")}
    if cfg.draft_model_dir is not None:
        drafters["draft_model"] = make_drafter("draft_model", directory=cfg.draft_model_dir)
    if cfg.drafter is not None and cfg.drafter not in drafters:
        raise ValueError(f"default drafter {cfg.drafter!r} is not available "
                         f"({', '.join(drafters)})")
    return drafters


def run_gateway(cfg: GatewayConfig) -> None:
    import uvicorn

    uvicorn.run(build_app(cfg), host=cfg.host, port=cfg.port, log_level="warning")
