"""The tracker: where nodes announce themselves and gateways look them up.

Nodes POST their `NodeInfo` every heartbeat; a node not heard from for `ttl_s` is dropped from
`GET /nodes`. Gateways report verdicts with `POST /nodes/{id}/status` (e.g. evicted), which the
tracker keeps so every gateway avoids that node. It holds no model and never imports torch.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from pydantic import BaseModel, Field


class NodeInfo(BaseModel):
    node_id: str
    url: str
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    version: str
    """The version new sessions get on this node (its channel's head once loaded)."""
    versions: list[str] = []
    """Every version loaded (during a rollout: the old one until its sessions drain)."""
    channel: dict = {}
    """The channel watch: name, whether the last read verified, the error if not."""
    public_key: str
    pid: int | None = None
    """Process id, for local swarms (tests kill nodes by it)."""
    sessions: int = 0
    queue: int = 0
    ms_per_token_layer: float = 1.0
    stats: dict = {}
    status: str = "ok"
    """Trust status: ``ok`` or ``evicted`` (set by verifiers)."""
    last_seen: float = 0.0


    def serves(self, version: str) -> bool:
        return version == self.version or version in self.versions


class StatusUpdate(BaseModel):
    status: str
    reason: str = ""


def create_app(ttl_s: float = 5.0) -> FastAPI:
    app = FastAPI(title="shoal tracker")
    nodes: dict[str, NodeInfo] = {}
    verdicts: dict[str, StatusUpdate] = {}

    @app.post("/announce")
    def announce(info: NodeInfo) -> dict:
        info.last_seen = time.time()
        if info.node_id in verdicts:
            info.status = verdicts[info.node_id].status
        nodes[info.node_id] = info
        return {"ok": True, "status": info.status}

    @app.get("/nodes")
    def list_nodes() -> list[NodeInfo]:
        cutoff = time.time() - ttl_s
        return [n for n in nodes.values() if n.last_seen >= cutoff]

    @app.post("/nodes/{node_id}/status")
    def set_status(node_id: str, update: StatusUpdate) -> dict:
        verdicts[node_id] = update
        if node_id in nodes:
            nodes[node_id].status = update.status
        return {"ok": True}

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "nodes": len(nodes)}

    return app
