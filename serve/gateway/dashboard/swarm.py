"""The swarm page's data: nodes, the route map over layers, throughput history and versions.

Everything here is read from the running gateway (its discovery, pipeline, verifier, engines and
version set); nothing is stored but the throughput ring buffer. Anyone with a key sees spans,
versions, trust status and measured speed; maintainers also see node addresses and the evidence
of the last checks, as `/verifier` does (a node must not learn the check schedule, so the schedule
itself is never shown).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from serve.exceptions import NoRoute

LAST_CHECKS = 3
"""Checks shown per node to maintainers (newest first)."""


@dataclass(frozen=True)
class Sample:
    at: float
    requests: int
    tokens: int


class Throughput:
    """A ring buffer of the gateway's request and token counters, sampled every `every_s`
    seconds, so the page can chart the last minutes without a metrics server."""

    def __init__(self, every_s: float = 2.0, keep: int = 300) -> None:
        self.every_s = every_s
        self.samples: deque[Sample] = deque(maxlen=keep)

    def sample(self, state: Any) -> None:
        engines = [rt.engine for rt in state.versions.items.values()]
        self.samples.append(Sample(time.time(), sum(e.requests for e in engines),
                                   sum(e.tokens_generated for e in engines)))

    async def run(self, state: Any) -> None:
        while True:
            self.sample(state)
            await asyncio.sleep(self.every_s)

    def series(self) -> list[dict[str, float]]:
        """Per interval: its end time, tokens per second and requests started. A version that
        was unloaded takes its counters with it; such a drop shows as zero, not negative."""
        points = []
        pairs = zip(list(self.samples), list(self.samples)[1:])
        for a, b in pairs:
            dt = max(b.at - a.at, 1e-6)
            points.append({"at": b.at, "tokens_per_s": max(b.tokens - a.tokens, 0) / dt,
                           "requests": max(b.requests - a.requests, 0)})
        return points


async def swarm_view(state: Any, throughput: Throughput, *, full: bool) -> dict[str, Any]:
    """What the swarm page shows; `full` (maintainer keys) adds addresses and check evidence."""
    pipeline = state.engine.pipeline
    verifier = state.verifier
    try:
        nodes = await pipeline.discovery.nodes()
        discovery_error = None
    except Exception as exc:  # the tracker is down: say so, show the rest
        nodes, discovery_error = [], f"discovery failed: {exc}"
    excluded = pipeline._excluded_now()
    rows = [_node_row(n, pipeline, verifier, excluded, full)
            for n in sorted(nodes, key=lambda n: (n.start, n.node_id))]
    try:
        route = [h.node_id for h in await pipeline.route()]
        route_error = None
    except NoRoute as exc:
        route, route_error = [], str(exc)
    return {"full": full, "model": state.model_name, "current": state.current,
            "verification": verifier is not None, "discovery_error": discovery_error,
            "nodes": rows, "route": route, "route_error": route_error,
            "layers": _layer_map(pipeline.num_layers, rows, state.current),
            "throughput": throughput.series(), "sample_every_s": throughput.every_s,
            "totals": {"requests": state.engine.requests,
                       "tokens": state.engine.tokens_generated,
                       "traversals": pipeline.traversals, "failovers": pipeline.failovers},
            "versions": _versions(state)}


def _node_row(node: Any, pipeline: Any, verifier: Any, excluded: set[str],
              full: bool) -> dict[str, Any]:
    trust = verifier.trust.get(node.node_id) if verifier is not None else None
    status = ("evicted" if node.status == "evicted" or node.node_id in pipeline.evicted
              else trust.status if trust is not None
              else "unchecked" if verifier is None else "new")
    row: dict[str, Any] = {
        "node_id": node.node_id, "start": node.start, "end": node.end,
        "version": node.version, "versions": node.versions or [node.version],
        "status": status, "reason": trust.reason if trust is not None else "",
        "routable": node.node_id not in excluded and status not in ("evicted",) and (
            verifier is None or verifier.admits(node)),
        "sessions": node.sessions, "queue": node.queue,
        "ms_per_token_layer": node.ms_per_token_layer,
        "measured_ms_per_layer": pipeline.measured_ms.get(node.node_id),
        "batches": node.stats.get("batches"), "last_seen": node.last_seen}
    if full:
        row["url"] = node.url
        row["verdict"] = node.verdict
        row["claims"] = node.claims
        if trust is not None:
            row["checks"], row["passed"] = trust.checks, trust.passed
        row["last_checks"] = _last_checks(verifier, node.node_id)
    return row


def _last_checks(verifier: Any, node_id: str) -> list[dict[str, Any]]:
    if verifier is None:
        return []
    found = []
    for event in reversed(verifier.events):
        if event.node_id == node_id:
            found.append({"kind": event.kind, "ok": event.ok, "check": event.check,
                          "detail": event.detail, "at": event.at,
                          "rel_error": event.rel_error})
            if len(found) == LAST_CHECKS:
                break
    return found


def _layer_map(num_layers: int, rows: list[dict[str, Any]], version: str) -> list[dict]:
    """Per layer: the routable nodes serving the current version that cover it (none: a gap)."""
    return [{"layer": layer, "nodes": [r["node_id"] for r in rows
                                       if r["start"] <= layer < r["end"] and r["routable"]
                                       and version in r["versions"]]}
            for layer in range(num_layers)]


def _versions(state: Any) -> dict[str, Any]:
    """Each loaded version and its phase (a version a switch left is draining; one loaded but
    never current is rolling out), and the channel watch's public fields."""
    drained_from = {s["from"] for s in state.rollout.get("switches", [])}
    loaded = [{"version": version, "inflight": runtime.inflight, "draft": runtime.draft,
               "phase": ("current" if version == state.current
                         else "draining" if version in drained_from else "rolling out")}
              for version, runtime in state.versions.items.items()]
    channel = state.rollout.get("channel")
    watch = ({k: channel[k] for k in ("channel", "ok", "sequence", "version") if k in channel}
             if isinstance(channel, dict) else None)
    return {"loaded": loaded, "channel": watch}
