"""Driving hidden states through chains of nodes, with failover.

`Pipeline` owns the gateway's network side: a persistent connection per first hop, a return
endpoint that last hops answer to, routes from discovery, and per-node exclusions after failures.
In chain mode (the default) one traversal is n+1 one-way trips: gateway -> A -> B -> C -> gateway.
The naive mode (what a Petals-style client does) calls each node in turn and waits for its answer:
2n trips; it exists so the benchmark can compare the two under the same links.

`Session` keeps a conversation's token history and how many positions the nodes have cached. When
a hop fails or times out it excludes the node, picks a new route, and re-prefills the history on
it, so greedy output is unchanged by failures.

The swarm protocol (docs/threat-model.md): the pipeline signs a ticket per session route with the
gateway's key and tags an order per traversal for every hop with their session keys, and accepts a
`Result` only when the last hop tagged it and it carries an unbroken chain of receipts tagged by
the route's hops ending in the tensor received; an `Error` counts only when a node of that
request's route signed it. Anything else arriving on the return port is dropped: a
forged result never reaches the sampler, and the genuine one still does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch

from registry.signing import SigningKey
from serve import auth, wire
from serve.config import TlsMode
from serve.discovery import Discovery
from serve.exceptions import FrameRejected, HopFailed, NoRoute, SessionEvicted, hop_error
from serve.links import Links, incoming
from serve.routing import best_route
from serve.transport import advertised_url, server_context, tls_enabled

log = logging.getLogger("shoal.gateway")

UNREACHABLE = "unreachable"
"""`HopFailed.code` when a frame could not even be sent (the dial, or the TLS pin, failed): the
node never saw it, so it is no evidence against the node; an on-path attacker can cause it."""


@dataclass
class Expect:
    """What the answer to one pending request must match."""

    route: list[wire.Hop]
    """The hops it went to: only their signed errors count."""
    about: bytes
    """The order's digest (a traversal) or the sent frame's `header_digest` (a direct
    request): an error or result about anything else is dropped."""
    order: wire.Order | None = None
    """A traversal's order (its result must carry a receipt chain for it)."""
    width: int = 0
    """Hidden size a traversal's output must have."""
    keys: list[bytes] | None = None
    """A traversal's session keys with each hop (its result and receipts carry their tags)."""


class Pipeline:
    def __init__(self, discovery: Discovery, num_layers: int, version: str | None, *,
                 host: str = "127.0.0.1", return_port: int = 0, return_url: str | None = None,
                 timeout_s: float = 60.0, wire_dtype: str = "float32", chain: bool = True,
                 exclude_s: float = 60.0, key: SigningKey | None = None,
                 tls: TlsMode = "auto") -> None:
        self.discovery, self.num_layers, self.version = discovery, num_layers, version
        self.tls = tls_enabled(tls, host)
        """Whether the return port speaks TLS (serve/transport.py)."""
        self.key = key or SigningKey.generate("gateway")
        self.max_frame_bytes = 64 << 20
        """Largest frame accepted on the return port."""
        """The gateway's key: signs tickets, orders, closes, challenges and audits."""
        self.host, self.return_port, self.return_url = host, return_port, return_url
        self.timeout_s, self.wire_dtype, self.chain = timeout_s, wire_dtype, chain
        self.exclude_s = exclude_s
        self.excluded: dict[str, float] = {}
        self.evicted: set[str] = set()
        """Nodes that failed verification: never routed again."""
        self.gate = None
        """Optional admission check `gate(node) -> bool` (the verifier's)."""
        self.mirror = None
        """Optional `mirror() -> Shadow | None`: the verifier's secret choice of sessions to
        spot-check (serve.gateway.audit)."""
        self.settle = None
        """Optional `settle(shadow)`: called when a mirrored session ends."""
        self.on_evidence = None
        """Optional `on_evidence(node_id, reason, evidence)`: a node signed proof of cheating."""
        self.on_receipts = None
        """Optional `on_receipts(receipts)`: a traversal's receipt chain was accepted (the
        usage meter counts what each node computed from these, not from nodes' claims)."""
        self.before_traverse = None
        """Optional `async before_traverse()`, awaited before each traversal (the batch
        scheduler holds batch lines there while interactive requests run)."""
        self.reply_to = ""
        self.traversals = 0
        self.failovers = 0
        self.measured_ms: dict[str, float] = {}
        """Per node: this gateway's estimate of its milliseconds per layer per traversal, from
        the traversals it timed (routing never believes a node is faster than this)."""
        self.open_sessions: dict[str, int] = {}
        """Per node: sessions this gateway has routed through it and not closed."""
        self._pending: dict[str, asyncio.Future] = {}
        self._expect: dict[str, Expect] = {}
        """What the answer to each pending request must match."""
        self.refused: dict[str, int] = {}
        """Frames dropped at the return port, by check (forged results, unsigned errors…)."""
        self.receipts: dict[str, list[wire.Receipt]] = {}
        """The receipt chain of recent traversals by request id (spot checks read them)."""
        self._tickets: dict[tuple, tuple[bytes, bytes]] = {}
        # pongs come back on these links
        self._links = Links(on_connect=self._handle_return, allow_plain=tls == "off")
        self._server = None

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handle_return, self.host, self.return_port,
                                   max_size=self.max_frame_bytes, compression=None,
                                   ping_interval=None,
                                   ssl=server_context(self.key) if self.tls else None)
        port = self._server.sockets[0].getsockname()[1]
        self.reply_to = advertised_url(self.host, port, self.return_url, self.tls)
        self.return_port = port

    async def stop(self) -> None:
        await self._links.close()
        if self._server is not None:
            self._server.close()

    async def _handle_return(self, ws) -> None:
        async for message, tensor in incoming(ws):
            try:
                self._on_return(message, tensor)
            except Exception:  # nothing arriving here may stop the return loop
                log.exception("return frame handling failed")

    def _on_return(self, message: wire.Message, tensor: torch.Tensor | None) -> None:
        future = self._pending.get(getattr(message, "request_id", ""))
        if future is None or future.done():
            return
        expected = self._expect.get(message.request_id)
        if expected is None:
            return self._refuse("unexpected")
        if isinstance(message, wire.Result):
            if expected.order is None or tensor is None:
                return self._refuse("result-unexpected")
            route, order, order_digest = expected.route, expected.order, expected.about
            if message.order_digest != order_digest:  # computed for another order: not ours
                return self._refuse("result-order")
            sender = auth.result_sender(message, route, expected.keys)
            if sender is None:  # tagged by no hop of this route: a forgery; the real one follows
                return self._refuse("result-tag")
            if sender != len(route) - 1:  # a hop tagged that it answers for the rest of the chain
                hop = route[sender]
                self._evidence(hop.node_id, "shortcut", f"hop {sender} of {len(route)} tagged a "
                               "final result", {"request_id": message.request_id,
                                                "tag": message.tag.hex()})
                future.set_exception(HopFailed(hop.node_id, "answered for the whole chain",
                                               "shortcut"))
                return
            try:
                auth.check_chain(message.receipts, route, expected.keys, order, order_digest,
                                 wire.tensor_digest(tensor, message.wire_dtype))
            except FrameRejected as exc:
                hop = route[exc.hop if exc.hop is not None else -1]
                future.set_exception(HopFailed(hop.node_id, str(exc), exc.check))
                return
            if (tuple(tensor.shape) != (order.count, expected.width)
                    or not bool(torch.isfinite(tensor).all())):  # signed, and unusable
                hop = route[-1]
                self._evidence(hop.node_id, "malformed", "the last hop signed an output of "
                               f"shape {tuple(tensor.shape)} or with non-finite values",
                               {"request_id": message.request_id})
                future.set_exception(HopFailed(hop.node_id, "malformed output", "malformed"))
                return
            self._remember(message.request_id, message.receipts)
            future.set_result(tensor)
        elif isinstance(message, wire.Error):
            if not auth.error_from(message, expected.route, expected.about):
                return self._refuse("error-unsigned")
            blamed, reporter = auth.blame(message, expected.route)
            future.set_exception(hop_error(blamed, message.code, message.message, reporter))
        elif isinstance(message, (wire.Proof, wire.Pong, wire.AuditReply)):
            if expected.order is not None:  # a traversal wants a result
                return self._refuse("unexpected")
            future.set_result((message, tensor) if isinstance(message, wire.AuditReply)
                              else message)

    def _evidence(self, node_id: str, check: str, detail: str, evidence: dict) -> None:
        """A node signed something that proves it cheated: evict it (through the verifier when
        there is one, so the verdict is recorded and reported)."""
        log.warning("evidence against %s: [%s] %s", node_id, check, detail)
        self.evict(node_id)
        if self.on_evidence is not None:
            asyncio.get_running_loop().create_task(
                self.on_evidence(node_id, f"[{check}] {detail}", evidence))

    def _refuse(self, check: str) -> None:
        self.refused[check] = self.refused.get(check, 0) + 1
        log.warning("dropped a frame at the return port: %s", check)

    def _remember(self, request_id: str, receipts: list[wire.Receipt]) -> None:
        self.receipts[request_id] = receipts
        if self.on_receipts is not None:
            self.on_receipts(receipts)
        while len(self.receipts) > 4096:
            self.receipts.pop(next(iter(self.receipts)))

    async def _send(self, url: str, frame: bytes, peer_key: str) -> None:
        await self._links.send(url, frame, peer_key)

    async def connect(self, url: str, public_key: str) -> None:
        """Have the link to `url` open (dialled now if it is not), pinned to `public_key`."""
        await self._links.connect(url, public_key)

    # routes --------------------------------------------------------------------------------------

    def exclude(self, node_id: str) -> None:
        self.excluded[node_id] = time.monotonic() + self.exclude_s

    def evict(self, node_id: str) -> None:
        self.evicted.add(node_id)

    def _excluded_now(self) -> set[str]:
        now = time.monotonic()
        return {n for n, until in self.excluded.items() if until > now} | self.evicted

    async def route(self, admits=None) -> list[wire.Hop]:
        """The best route; `admits` (a `serve.policy.NodeFilter`) narrows it to the nodes a
        request's routing policy allows, and a `NoRoute` then names that policy."""
        nodes = await self.discovery.nodes()
        if self.gate is not None:
            nodes = [n for n in nodes if self.gate(n)]
        if admits is not None:
            nodes = [n for n in nodes if admits(n)]
        try:
            return best_route(nodes, self.num_layers, version=self.version,
                              exclude=self._excluded_now(), measured_ms=self.measured_ms,
                              own_load=self.open_sessions)
        except NoRoute as exc:
            if admits is None:
                raise
            raise NoRoute(f"no route under routing policy '{admits.name}': {exc}") from None

    # traversal -----------------------------------------------------------------------------------

    async def request(self, url: str, message, tensor=None, *, node_id: str, public_key: str,
                      timeout_s: float | None = None, expect: "Expect | None" = None,
                      request_id: str | None = None) -> object:
        """Send one message and wait for the answer that carries its request id. `expect` says
        what the answer must match; by default, the node `node_id` at `url` answering exactly
        this frame. `public_key` is the node's signed key: a ``wss://`` peer must present it."""
        request_id = request_id or message.request_id
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._expect[request_id] = expect or Expect([wire.Hop(node_id, url, 0, 1, public_key)],
                                                    wire.header_digest(message))
        try:
            try:
                await self._send(url, wire.encode(message, tensor, self.wire_dtype),
                                 public_key)
            except Exception as exc:  # nothing reached the node: no evidence against it
                raise HopFailed(node_id, f"unreachable ({exc})", UNREACHABLE) from None
            return await asyncio.wait_for(future, timeout_s or self.timeout_s)
        finally:
            self._pending.pop(request_id, None)
            self._expect.pop(request_id, None)

    def ticket(self, session: str, route: list[wire.Hop]) -> tuple[bytes, bytes, list[bytes]]:
        """The signed ticket of `session` on `route` and the session keys with its hops (made
        once per session and route)."""
        key = (session, tuple(route))
        cached = self._tickets.get(key)
        if cached is None:
            ticket, signature = auth.make_ticket(
                self.key, session, route, self.reply_to, self.version or "", self.wire_dtype)
            try:
                keys = auth.gateway_keys(self.key, ticket, route)
            except FrameRejected as exc:  # a hop whose key admits no key exchange
                raise HopFailed(route[exc.hop].node_id, str(exc), "session-key") from None
            cached = self._tickets[key] = (ticket, signature, keys)
            while len(self._tickets) > 8192:
                self._tickets.pop(next(iter(self._tickets)))
        return cached

    async def traverse(self, session: str, route: list[wire.Hop], hidden: torch.Tensor,
                       keep: int, count: bool = True,
                       done: list[tuple[list[wire.Hop], str]] | None = None) -> torch.Tensor:
        """Run [T, H] hidden states through every hop; returns the last hop's [T, H].
        `done` collects (hops, request id) of each part that answered."""
        if self.before_traverse is not None:
            await self.before_traverse()
        self.traversals += count
        hops = [route] if self.chain else [[h] for h in route]
        for part in hops:
            ticket, ticket_sig, keys = self.ticket(session, part)
            request_id = uuid.uuid4().hex
            order, order_tags = auth.make_order(keys, ticket, request_id, keep, hidden.shape[0],
                                                wire.tensor_digest(hidden, self.wire_dtype))
            msg = wire.Forward(ticket, ticket_sig, order, order_tags, 0, [], self.wire_dtype)
            expect = Expect(part, wire.digest(order), wire.unpack_order(order), hidden.shape[1],
                            keys)
            t0 = time.perf_counter()
            try:
                hidden = await self.request(part[0].url, msg, hidden, node_id=part[0].node_id,
                                            public_key=part[0].public_key,
                                            expect=expect, request_id=request_id)
            except TimeoutError:
                raise HopFailed(await self._silent_node(part), "timed out") from None
            self._measure(part, 1000 * (time.perf_counter() - t0))
            if done is not None:
                done.append((part, request_id))
        return hidden

    def _measure(self, part: list[wire.Hop], elapsed_ms: float) -> None:
        per_layer = elapsed_ms / max(1, sum(h.end - h.start for h in part))
        for hop in part:
            old = self.measured_ms.get(hop.node_id)
            self.measured_ms[hop.node_id] = per_layer if old is None else \
                0.8 * old + 0.2 * per_layer

    async def culprit(self, exc: HopFailed, route: list[wire.Hop]) -> str:
        """The node to route around after `exc`. A hop that reports its next hop down is
        believed only if that hop does not answer a ping now; otherwise the reporter is avoided
        (it lied, or the link between the two is broken: either way not through it)."""
        if exc.reporter is None or exc.reporter == exc.node_id:
            return exc.node_id
        named = next((h for h in route if h.node_id == exc.node_id), None)
        if named is None:
            return exc.reporter
        if not await self._answers(named):
            return exc.node_id
        log.warning("%s reported %s down, but it answers: avoiding the reporter", exc.reporter,
                    exc.node_id)
        return exc.reporter

    async def _silent_node(self, route: list[wire.Hop]) -> str:
        """After a timeout, find which hop of the route does not answer a ping."""
        for hop in route:
            if not await self._answers(hop):
                return hop.node_id
        return route[-1].node_id

    async def _answers(self, hop: wire.Hop, timeout_s: float = 2.0) -> bool:
        """Whether `hop` answers a ping with a pong signed by its key within `timeout_s`."""
        ping = wire.Ping(uuid.uuid4().hex)
        try:
            await self.request(hop.url, ping, node_id=hop.node_id, timeout_s=timeout_s,
                               public_key=hop.public_key,
                               expect=Expect([hop], wire.header_digest(ping)))
        except Exception:
            return False
        return True

    async def ping(self, hop: wire.Hop) -> tuple[float, dict]:
        """Round-trip time in ms and the node's self-reported info."""
        t0 = time.perf_counter()
        ping = wire.Ping(uuid.uuid4().hex)
        pong = await self.request(hop.url, ping, node_id=hop.node_id, public_key=hop.public_key,
                                  expect=Expect([hop], wire.header_digest(ping)))
        return 1000 * (time.perf_counter() - t0), pong.stats

    def opened(self, route: list[wire.Hop], delta: int) -> None:
        for hop in route:
            n = self.open_sessions.get(hop.node_id, 0) + delta
            if n > 0:
                self.open_sessions[hop.node_id] = n
            else:
                self.open_sessions.pop(hop.node_id, None)

    def close_session(self, session: str, route: list[wire.Hop]) -> None:
        frame = wire.encode(auth.sign_close(self.key, session))
        for key in [k for k in self._tickets if k[0] == session]:
            del self._tickets[key]

        async def _close():
            for hop in route:
                try:
                    await self._send(hop.url, frame, hop.public_key)
                except Exception:
                    pass
        asyncio.get_running_loop().create_task(_close())


class Session:
    """One conversation's state at the gateway: token history and the nodes' cache length."""

    MAX_FAILOVERS = 4

    def __init__(self, pipeline: Pipeline, embed: Callable[[list[int]], torch.Tensor],
                 admits=None) -> None:
        self.pipeline, self.embed = pipeline, embed
        self.admits = admits
        """The request's routing-policy filter (`serve.policy.NodeFilter`), kept on failover."""
        self.tokens: list[int] = []
        self.cached = 0
        self.route: list[wire.Hop] | None = None
        self.id = ""
        self.traversals = 0
        self.failovers = 0
        self.shadow = pipeline.mirror() if pipeline.mirror is not None else None

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
                self.route = await self.pipeline.route(self.admits)
                self.id = uuid.uuid4().hex
                self.cached = 0
                self.pipeline.opened(self.route, +1)
            start = min(keep, self.cached)
            todo = self.tokens[start:]
            inputs, done = self.embed(todo), []
            try:
                hidden = await self.pipeline.traverse(self.id, self.route, inputs, start,
                                                      done=done)
            except HopFailed as exc:
                if attempt == self.MAX_FAILOVERS:
                    raise
                log.warning("failover after %s", exc)
                if not isinstance(exc, SessionEvicted):  # an evicted session is no one's fault
                    self.pipeline.exclude(await self.pipeline.culprit(exc, self.route))
                self._abandon_route()
                continue
            self.traversals += 1
            self.cached = len(self.tokens)
            if self.shadow is not None:
                self.shadow.observe(done, start, inputs)
            return hidden[-len(new_tokens):] if new_tokens else hidden[:0]
        raise NoRoute("unreachable")  # the loop either returns or raises

    def _abandon_route(self) -> None:
        """Give up the current route; the next traversal re-prefills on a new one. This is what a
        failover is, and the one place both the session's and the pipeline's count grow."""
        self.pipeline.close_session(self.id, self.route)
        self.pipeline.opened(self.route, -1)
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
            self.pipeline.opened(self.route, -1)
            self.route = None
        if self.shadow is not None and self.pipeline.settle is not None:
            asyncio.get_running_loop().create_task(self.pipeline.settle(self.shadow))
            self.shadow = None
