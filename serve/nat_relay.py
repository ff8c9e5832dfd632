"""Serving from behind NAT: a relay any reachable host can run, splicing TCP, never reading it.

A node that cannot accept connections (NAT, a firewall it does not control) keeps a few
connections open *to* a relay and offers them for its id; a peer that wants the node dials the
relay and names the id; the relay pairs the two and from then on copies bytes both ways. The TLS
session (serve/transport.py) runs end to end inside the spliced stream, from the dialer to the
node, pinned to the node's key as always: the relay sees only ciphertext, and a relay (or anyone
who offers for an id that is not theirs) that answers in the node's place fails the pin. What a
relay can do is drop or delay traffic, which costs the node its routes, as any link can.

Each connection starts with one line, then the stream belongs to the pair:

    SHOAL-OFFER <public key hex> <unix time> <signature hex>\\n    (node -> relay; the relay
        answers GO\\n when a dialer takes the offer; signed so that offers for an id come from
        its key, which bounds what a stranger can make the relay hold)
    SHOAL-DIAL <node id>\\n                                          (dialer -> relay)

A node advertises ``wss://RELAY:PORT/via/<node id>``; `serve.transport.dial` sees the path and
sends the DIAL line before the handshake. The cost is the detour: every frame to the node
travels dialer -> relay -> node instead of dialer -> node (one extra leg each way, plus the copy
at the relay); frames the node sends (to its next hop, to the gateway) go straight out.

It knows nothing about frames, sessions or models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from registry.signing import SigningKey
from serve.records import node_id_of

log = logging.getLogger("shoal.nat_relay")
MAX_LINE = 256
OFFER_WINDOW_S = 60.0
"""An offer signed longer ago than this (or this far ahead) is refused."""
VIA = "/via/"
OFFER_POLL_S = 0.02


def offer_bytes(public_hex: str, issued_at: int) -> bytes:
    return b"shoal-offer\0" + public_hex.encode() + b"\0" + str(issued_at).encode()


def offer_line(key: SigningKey, now: float | None = None) -> bytes:
    issued_at = int(now if now is not None else time.time())
    sig = key.sign_bytes(offer_bytes(key.public_hex, issued_at))
    return f"SHOAL-OFFER {key.public_hex} {issued_at} {sig}\n".encode()


def via_target(path: str) -> str | None:
    """The node id a ``/via/<id>`` path names, or None for any other path."""
    if not path.startswith(VIA):
        return None
    node_id = path[len(VIA):].strip("/")
    return node_id if len(node_id) == 32 and all(c in "0123456789abcdef" for c in node_id) \
        else None


def _address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else ""


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` into `writer` until either side ends."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@dataclass
class RelayConfig:
    host: str = "0.0.0.0"
    port: int = 7300
    max_offers_per_node: int = 8
    max_nodes: int = 1024
    max_ids_per_address: int = 16
    """Node ids one source address may hold offers for (keys are free to make: without this
    one host could push every real node's offers out)."""
    max_dials_per_address: int = 32
    """Spliced connections one dialing address may hold open at once."""
    line_timeout_s: float = 10.0
    offer_wait_s: float = 5.0
    """How long a dialer waits for an offer when none is free (a node replaces each offer a
    dialer takes at once, but not before the next dialer may come)."""


class Relay:
    """Holds nodes' offers and pairs dialers with them. Every bound is per peer or global: a
    stranger's lines are refused, an id's offers are capped, the oldest id is dropped first."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.offers: OrderedDict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] \
            = OrderedDict()
        self.spliced = 0
        self._ids_by_address: dict[str, set[str]] = {}
        """Source address -> the node ids it holds offers for."""
        self._address_of: dict[str, str] = {}
        """Node id -> the address its offers come from (the first one seen)."""
        self._dialing: dict[str, int] = {}
        """Dialing address -> its spliced connections now open."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), self.config.line_timeout_s)
        except (asyncio.TimeoutError, ConnectionError, ValueError):
            writer.close()
            return
        words = line[:MAX_LINE].decode("ascii", "replace").split()
        if len(words) == 4 and words[0] == "SHOAL-OFFER":
            self._offer(words[1:], reader, writer)
        elif len(words) == 2 and words[0] == "SHOAL-DIAL":
            await self._dial(words[1], reader, writer)
        else:
            writer.close()

    def _offer(self, words: list[str], reader, writer) -> None:
        from serve.auth import verify

        public_hex, issued_at, sig = words
        try:
            fresh = abs(time.time() - int(issued_at)) < OFFER_WINDOW_S
            signed = verify(public_hex, bytes.fromhex(sig), offer_bytes(public_hex, int(issued_at)))
            node_id = node_id_of(public_hex)
        except ValueError:
            fresh = signed = False
        if not (fresh and signed):
            writer.close()
            return
        address = _address(writer)
        ids = self._ids_by_address.setdefault(address, set())
        if node_id not in self.offers:
            if len(ids) >= self.config.max_ids_per_address:
                writer.close()
                return
            ids.add(node_id)
            self._address_of[node_id] = address
        pool = self.offers.setdefault(node_id, [])
        self.offers.move_to_end(node_id)
        pool.append((reader, writer))
        while len(pool) > self.config.max_offers_per_node:
            pool.pop(0)[1].close()
        while len(self.offers) > self.config.max_nodes:
            dropped, pool = self.offers.popitem(last=False)
            for _, w in pool:
                w.close()
            self._forget(dropped)

    def _forget(self, node_id: str) -> None:
        address = self._address_of.pop(node_id, None)
        ids = self._ids_by_address.get(address)
        if ids is not None:
            ids.discard(node_id)
            if not ids:
                del self._ids_by_address[address]

    async def _take(self, node_id: str):
        """A live offer for `node_id`, waiting up to `offer_wait_s` for one; None if none came."""
        deadline = asyncio.get_running_loop().time() + self.config.offer_wait_s
        while True:
            pool = self.offers.get(node_id, [])
            while pool:
                node_reader, node_writer = pool.pop(0)
                if not (node_writer.is_closing() or node_reader.at_eof()):
                    return node_reader, node_writer
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(OFFER_POLL_S)

    async def _dial(self, node_id: str, reader, writer) -> None:
        address = _address(writer)
        if self._dialing.get(address, 0) >= self.config.max_dials_per_address:
            writer.close()
            return
        self._dialing[address] = self._dialing.get(address, 0) + 1
        try:
            await self._pair(node_id, reader, writer)
        finally:
            self._dialing[address] -= 1
            if not self._dialing[address]:
                del self._dialing[address]

    async def _pair(self, node_id: str, reader, writer) -> None:
        while (offer := await self._take(node_id)) is not None:
            node_reader, node_writer = offer
            if node_writer.is_closing() or node_reader.at_eof():
                continue
            try:
                node_writer.write(b"GO\n")
                await node_writer.drain()
            except (ConnectionError, OSError):
                continue
            self.spliced += 1
            await asyncio.gather(splice(reader, node_writer), splice(node_reader, writer))
            return
        writer.close()  # no offer: the dialer sees a closed connection, as for a dead host


async def serve_relay(config: RelayConfig) -> None:
    relay = Relay(config)
    server = await asyncio.start_server(relay.handle, config.host, config.port)
    log.info("NAT relay on %s:%d", config.host, config.port)
    async with server:
        await server.serve_forever()


def run_relay(config: RelayConfig) -> None:
    """Blocking entry point (used by `shoal nat-relay`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(serve_relay(config))
    except KeyboardInterrupt:
        pass


class Offers:
    """The node's side: keep `pool` offers open at the relay; each one a dialer takes is spliced
    to the node's own websocket port on loopback (where TLS is served), and replaced."""

    def __init__(self, relay: str, key: SigningKey, local_port: int, pool: int = 4) -> None:
        host, _, port = relay.rpartition(":")
        self.relay_host, self.relay_port = host.strip("[]"), int(port)
        self.key, self.local_port, self.pool = key, local_port, pool
        self._spliced: set[asyncio.Task] = set()
        """Connections being served (held here: the loop keeps only weak references)."""
        self.placed = asyncio.Event()
        """Set once an offer is at the relay: from then on the node can be dialled (it
        announces itself only then; a dial before finds no offer and waits at the relay)."""

    async def run(self) -> None:
        await asyncio.gather(*(self._offer_forever() for _ in range(self.pool)))

    async def _offer_forever(self) -> None:
        backoff = 0.5
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.relay_host, self.relay_port)
                writer.write(offer_line(self.key))
                await writer.drain()
                self.placed.set()
                go = await reader.readline()
                if go != b"GO\n":
                    writer.close()
                    raise ConnectionError("the relay closed the offer")
                backoff = 0.5
                task = asyncio.create_task(self._serve(reader, writer))
                self._spliced.add(task)
                task.add_done_callback(self._spliced.discard)
            except (ConnectionError, OSError) as exc:
                log.warning("relay %s:%d: %s", self.relay_host, self.relay_port, exc)
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)

    async def _serve(self, reader, writer) -> None:
        try:
            local_reader, local_writer = await asyncio.open_connection("127.0.0.1",
                                                                       self.local_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(splice(reader, local_writer), splice(local_reader, writer))
