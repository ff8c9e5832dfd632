"""How a gateway finds nodes: the `NodeInfo` record and the `Discovery` interface, so a DHT can
replace the tracker later.

`Discovery.nodes()` returns the live nodes of the swarm with their spans, versions, addresses,
keys, load, speed and trust status (routing skips evicted ones); `report()` tells the swarm a
verdict about a node.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, Field


class NodeInfo(BaseModel):
    """What a node says about itself, and what discovery adds (trust status, last seen)."""

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
    """When the tracker last heard from the node (its clock)."""

    def serves(self, version: str) -> bool:
        return version == self.version or version in self.versions


class Discovery(Protocol):
    async def nodes(self) -> list[NodeInfo]: ...

    async def report(self, node_id: str, status: str, reason: str) -> None: ...


class TrackerDiscovery:
    """Discovery through a tracker's HTTP API."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=5)

    async def nodes(self) -> list[NodeInfo]:
        response = await self._http.get(f"{self.url}/nodes")
        response.raise_for_status()
        return [NodeInfo.model_validate(n) for n in response.json()]

    async def report(self, node_id: str, status: str, reason: str) -> None:
        await self._http.post(f"{self.url}/nodes/{node_id}/status",
                              json={"status": status, "reason": reason})

    async def aclose(self) -> None:
        await self._http.aclose()


class StaticDiscovery:
    """A fixed node list (tests and single-machine setups without a tracker)."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self._nodes = nodes

    async def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    async def report(self, node_id: str, status: str, reason: str) -> None:
        for n in self._nodes:
            if n.node_id == node_id:
                n.status = status
