"""The tracker: where nodes announce themselves and gateways look them up.

Nodes POST their `NodeInfo` every heartbeat; a node not heard from for `ttl_s` is dropped from
`GET /nodes`. Gateways report verdicts with `POST /nodes/{id}/status` (e.g. evicted), which the
tracker keeps so every gateway avoids that node. It holds no model and never imports torch.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from pydantic import BaseModel

from serve.discovery import NodeInfo


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
