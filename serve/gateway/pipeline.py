"""Driving hidden states through chains of nodes, with failover.

`Pipeline` owns the gateway's network side: a persistent connection per first hop, a return
endpoint that last hops answer to, routes from discovery, and per-node exclusions after failures.
In chain mode (the default) one traversal is n+1 one-way trips: gateway -> A -> B -> C -> gateway.
The naive mode (what a Petals-style client does) calls each node in turn and waits for its answer:
2n trips; it exists so the benchmark can compare the two under the same links.

`Session` keeps a conversation's token history and how many positions the nodes have cached. When
a hop fails or times out it excludes the node, picks a new route, and re-prefills the history on
it, so greedy output is unchanged by failures.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import torch

from serve import wire
from serve.discovery import Discovery
from serve.exceptions import HopFailed, NoRoute, SessionEvicted, hop_error
from serve.links import Links, incoming
from serve.routing import best_route

log = logging.getLogger("shoal.gateway")


class Pipeline:
    def __init__(self, discovery: Discovery, num_layers: int, version: str | None, *,
                 host: str = "127.0.0.1", return_port: int = 0, return_url: str | None = None,
                 timeout_s: float = 60.0, wire_dtype: str = "float32", chain: bool = True,
                 exclude_s: float = 60.0) -> None:
        self.discovery, self.num_layers, self.version = discovery, num_layers, version
        self.host, self.return_port, self.return_url = host, return_port, return_url
        self.timeout_s, self.wire_dtype, self.chain = timeout_s, wire_dtype, chain
        self.exclude_s = exclude_s
        self.excluded: dict[str, float] = {}
        self.evicted: set[str] = set()
        """Nodes that failed verification: never routed again."""
        self.gate = None
        """Optional admission check `gate(node) -> bool` (the verifier's)."""
        self.reply_to = ""
        self.traversals = 0
        self.failovers = 0
        self._pending: dict[str, asyncio.Future] = {}
        self._links = Links(on_connect=self._handle_return)  # pongs come back on these links
        self._server = None

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handle_return, self.host, self.return_port,
                                   max_size=None, compression=None, ping_interval=None)
        port = self._server.sockets[0].getsockname()[1]
        self.reply_to = self.return_url or f"ws://{self.host}:{port}"
        self.return_port = port

    async def stop(self) -> None:
        await self._links.close()
        if self._server is not None:
            self._server.close()

    async def _handle_return(self, ws) -> None:
        async for message, tensor in incoming(ws):
            future = self._pending.get(getattr(message, "request_id", ""))
            if future is None or future.done():
                continue
            if isinstance(message, wire.Result):
                future.set_result(tensor)
            elif isinstance(message, (wire.Proof, wire.Pong)):
                future.set_result(message)
            elif isinstance(message, wire.Error):
                future.set_exception(hop_error(message.node_id, message.code, message.message))

    async def _send(self, url: str, frame: bytes) -> None:
        await self._links.send(url, frame)

    # routes --------------------------------------------------------------------------------------

    def exclude(self, node_id: str) -> None:
        self.excluded[node_id] = time.monotonic() + self.exclude_s

    def evict(self, node_id: str) -> None:
        self.evicted.add(node_id)

    def _excluded_now(self) -> set[str]:
        now = time.monotonic()
        return {n for n, until in self.excluded.items() if until > now} | self.evicted

    async def route(self) -> list[wire.Hop]:
        nodes = await self.discovery.nodes()
        if self.gate is not None:
            nodes = [n for n in nodes if self.gate(n)]
        return best_route(nodes, self.num_layers, version=self.version,
                          exclude=self._excluded_now())

    # traversal -----------------------------------------------------------------------------------

    async def request(self, url: str, message, tensor=None, *, node_id: str,
                      timeout_s: float | None = None) -> object:
        """Send one message and wait for the answer that carries its request id."""
        future = asyncio.get_running_loop().create_future()
        self._pending[message.request_id] = future
        try:
            try:
                await self._send(url, wire.encode(message, tensor, self.wire_dtype))
            except Exception as exc:
                raise HopFailed(node_id, f"unreachable ({exc})") from None
            return await asyncio.wait_for(future, timeout_s or self.timeout_s)
        finally:
            self._pending.pop(message.request_id, None)

    async def traverse(self, session: str, route: list[wire.Hop], hidden: torch.Tensor,
                       keep: int, count: bool = True) -> torch.Tensor:
        """Run [T, H] hidden states through every hop; returns the last hop's [T, H]."""
        self.traversals += count
        hops = [route] if self.chain else [[h] for h in route]
        for part in hops:
            msg = wire.Forward(uuid.uuid4().hex, session, part, 0, keep, self.reply_to,
                               self.wire_dtype, self.version or "")
            try:
                hidden = await self.request(part[0].url, msg, hidden, node_id=part[0].node_id)
            except TimeoutError:
                raise HopFailed(await self._silent_node(part), "timed out") from None
        return hidden

    async def _silent_node(self, route: list[wire.Hop]) -> str:
        """After a timeout, find which hop of the route does not answer a ping."""
        for hop in route:
            try:
                ping = wire.Ping(uuid.uuid4().hex)
                future = asyncio.get_running_loop().create_future()
                self._pending[ping.request_id] = future
                await self._send(hop.url, wire.encode(ping))
                await asyncio.wait_for(future, 2.0)
            except Exception:
                return hop.node_id
            finally:
                self._pending.pop(ping.request_id, None)
        return route[-1].node_id

    async def ping(self, hop: wire.Hop) -> tuple[float, dict]:
        """Round-trip time in ms and the node's self-reported info."""
        t0 = time.perf_counter()
        pong = await self.request(hop.url, wire.Ping(uuid.uuid4().hex), node_id=hop.node_id)
        return 1000 * (time.perf_counter() - t0), pong.stats

    def close_session(self, session: str, route: list[wire.Hop]) -> None:
        async def _close():
            for hop in route:
                try:
                    await self._send(hop.url, wire.encode(wire.Close(session)))
                except Exception:
                    pass
        asyncio.get_running_loop().create_task(_close())


class Session:
    """One conversation's state at the gateway: token history and the nodes' cache length."""

    MAX_FAILOVERS = 4

    def __init__(self, pipeline: Pipeline, embed: Callable[[list[int]], torch.Tensor]) -> None:
        self.pipeline, self.embed = pipeline, embed
        self.tokens: list[int] = []
        self.cached = 0
        self.route: list[wire.Hop] | None = None
        self.id = ""
        self.traversals = 0
        self.failovers = 0

    async def extend(self, new_tokens: list[int], keep: int | None = None) -> torch.Tensor:
        """Append `new_tokens` after the first `keep` tokens of history (default: all of it)
        and return the last-layer hidden states of the new positions."""
        keep = len(self.tokens) if keep is None else keep
        assert keep <= len(self.tokens), (keep, len(self.tokens))
        self.tokens = self.tokens[:keep] + list(new_tokens)
        for attempt in range(self.MAX_FAILOVERS + 1):
            if self.route is not None and any(h.node_id in self.pipeline.evicted
                                              for h in self.route):
                self._abandon_route()  # never again through an evicted node
            if self.route is None:
                self.route = await self.pipeline.route()
                self.id = uuid.uuid4().hex
                self.cached = 0
            start = min(keep, self.cached)
            todo = self.tokens[start:]
            try:
                hidden = await self.pipeline.traverse(self.id, self.route, self.embed(todo), start)
            except HopFailed as exc:
                if attempt == self.MAX_FAILOVERS:
                    raise
                log.warning("failover after %s", exc)
                if not isinstance(exc, SessionEvicted):  # an evicted session is no one's fault
                    self.pipeline.exclude(exc.node_id)
                self._abandon_route()
                continue
            self.traversals += 1
            self.cached = len(self.tokens)
            return hidden[-len(new_tokens):] if new_tokens else hidden[:0]
        raise NoRoute("unreachable")  # the loop either returns or raises

    def _abandon_route(self) -> None:
        """Give up the current route; the next traversal re-prefills on a new one. This is what a
        failover is, and the one place both the session's and the pipeline's count grow."""
        self.pipeline.close_session(self.id, self.route)
        self.route = None
        self.failovers += 1
        self.pipeline.failovers += 1

    def rollback(self, length: int) -> None:
        """Forget history beyond `length` tokens (rejected drafts). The nodes drop the same
        positions when the next forward carries keep=length; no message is sent now."""
        self.tokens = self.tokens[:length]
        self.cached = min(self.cached, length)

    def close(self) -> None:
        if self.route is not None:
            self.pipeline.close_session(self.id, self.route)
            self.route = None
