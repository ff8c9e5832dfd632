"""How a gateway finds nodes. One interface, so a DHT can replace the tracker later.

`Discovery.nodes()` returns the live nodes of the swarm with their spans, versions, addresses,
keys, load, speed and trust status (routing skips evicted ones); `report()` tells the swarm a
verdict about a node.
"""

from __future__ import annotations

from typing import Protocol

from serve.tracker import NodeInfo


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
