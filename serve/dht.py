"""One process's peer in a swarm's Kademlia DHT: the `kademlia` package (asyncio, UDP via
`rpcudp`), with storage that checks every value before keeping it.

What lives in the DHT, all sealed with the swarm's key (serve/invite.py):

- ``node/<id>``: node `id`'s latest signed record (`serve.records`);
- ``index``: the swarm's membership index. A node announces by storing its record under both
  keys; a storing peer of the index verifies the record and *merges* it (one entry per node id),
  so no store can erase another node from the index. A lookup of the index answers the ids and
  issue times of the members it holds;
- ``verdicts/<id>``: signed verdicts about node `id`, the newest per signing key (at most
  `MAX_VERDICTS_PER_NODE` keys). Any member may post one; each reader decides whose it trusts.

A storing peer refuses (and a reader drops) anything that does not open with the swarm's key for
exactly that DHT key, that `check_record` refuses (id = hash of key, signature, canonical form,
issued within the record TTL), that sits under another node's key, or that is not newer than the
record it holds for that node (a replay). Readers ask every one of the k peers closest to the
membership index and merge what they answer, so one storing peer cannot hide a node; readers
verify every record again themselves (serve/dht_discovery.py).

The DHT layer itself is open: a process without the invite can exchange routing messages with
the swarm's peers (and so learn their UDP addresses), but cannot compute the swarm's keys, read
its values or store any. Every datagram is bounded and any error while handling one costs that
datagram only.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import math
import re
import time
from collections import OrderedDict
from typing import Any, Iterator

from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import IStorage

from serve.config import DhtConfig
from serve.discovery import MAX_VERDICTS_PER_NODE, check_record, check_verdict
from serve.exceptions import InviteError, RecordRejected
from serve.invite import KEY_BYTES, Peer, SwarmKeys
from serve.records import MAX_SKEW_S, NODE_ID_HEX

log = logging.getLogger("shoal.dht")

MAX_DATAGRAM = 60_000
"""Larger datagrams are dropped unread (a loopback datagram holds at most 65,507 bytes)."""
MAX_VALUE_BYTES = 7_800
"""Largest sealed value stored (a request datagram of `rpcudp` holds at most 8 KiB)."""
MAX_ANSWER_BYTES = 40_000
"""A verdict lookup answers the newest verdicts that fit in this many bytes."""
LOOKUPS_IN_FLIGHT = 4
"""Keys a reader looks up at once: each lookup is ~2k datagrams, and a burst of all of them
overflows UDP receive buffers (answers lost, lookups timing out)."""
UNANSWERED_S = 60.0
"""A peer that let a request time out is left out of the contacts other peers hand over for
this long, or until any datagram from it arrives (it was only slow)."""
MAX_UNANSWERED = 1024
"""Most unanswered peers remembered (the oldest are forgotten first)."""
_NODE_ID = re.compile(f"[0-9a-f]{{{NODE_ID_HEX}}}")
"""A node id as `serve.records.node_id_of` makes it: index entries of any other form are
dropped before a lookup is spent on them."""


def _strict_json(data: bytes) -> Any:
    def no_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data, parse_constant=no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise RecordRejected("json", "the value is not JSON") from None


class SwarmStorage(IStorage):
    """The values this peer stores for the swarm, each checked on the way in (`accept`).

    Node keys hold one record each; the index holds one entry per node id. Both are bounded by
    `max_nodes`; entries older than the TTL are dropped whenever the storage is read."""

    def __init__(self, keys: SwarmKeys, ttl_s: float, max_nodes: int) -> None:
        self.keys, self.ttl_s, self.max_nodes = keys, ttl_s, max_nodes
        self.records: dict[bytes, tuple[str, float, bytes]] = {}
        """DHT key -> (node id, issued at, the value as sealed by the node)."""
        self.index: dict[str, tuple[float, bytes]] = {}
        """Node id -> (issued at, its record as sealed for the index key)."""
        self.verdicts: OrderedDict[bytes, dict[str, tuple[float, dict, bytes]]] = OrderedDict()
        """Verdict key -> signing key -> (issued at, the verdict, as sealed): the newest by each
        key; the nodes least recently posted about go first beyond `max_nodes`."""

    def accept(self, dkey: Any, value: Any) -> bool:
        """Keep `value` under `dkey` if it passes every check; False (logged) otherwise."""
        try:
            self._accept(dkey, value, time.time())
            return True
        except (RecordRejected, InviteError) as exc:
            log.debug("refused a store: %s", exc)
            return False

    def _accept(self, dkey: Any, value: Any, now: float) -> None:
        if not isinstance(dkey, bytes) or len(dkey) != KEY_BYTES:
            raise RecordRejected("key", "a DHT key is 20 bytes")
        if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
            raise RecordRejected("size", f"a value is bytes, at most {MAX_VALUE_BYTES}")
        entry = _strict_json(self.keys.open(dkey, value))
        if isinstance(entry, dict) and "by" in entry:
            self._accept_verdict(dkey, entry, value, now)
            return
        record = check_record(entry, now=now, max_age_s=self.ttl_s)
        if record.issued_at > now + self.ttl_s:
            # readers allow clocks 30 s apart, but a stored entry lives until issued_at + ttl:
            # dated far ahead, one signature would hold a slot for several lifetimes
            raise RecordRejected("clock", f"the record of {record.node_id} is dated "
                                 f"{record.issued_at - now:.0f} s ahead of this peer's clock")
        if dkey == self.keys.index:
            held = self.index.get(record.node_id)
            table_size = len(self.index)
        elif dkey == self.keys.node_key(record.node_id):
            held = self.records.get(dkey)
            held = held[1:] if held else None
            table_size = len(self.records)
        else:
            raise RecordRejected("key", f"the record of {record.node_id} is stored under "
                                 "another key")
        if held is not None and record.issued_at <= held[0]:
            raise RecordRejected("replay", f"the record of {record.node_id} is not newer than "
                                 "the one held")
        if held is None and table_size >= self.max_nodes:
            self._purge(now)
            if len(self.index if dkey == self.keys.index else self.records) >= self.max_nodes:
                raise RecordRejected("full", f"this peer holds {self.max_nodes} nodes")
        if dkey == self.keys.index:
            self.index[record.node_id] = (record.issued_at, value)
        else:
            self.records[dkey] = (record.node_id, record.issued_at, value)

    def _accept_verdict(self, dkey: bytes, entry: dict, value: bytes, now: float) -> None:
        """A verdict signed by the key it names, under its node's verdict key, newer than the
        one held from that key. Whether the key is an authority is each reader's decision."""
        by = entry.get("by")
        if not isinstance(by, str):
            raise RecordRejected("schema", "a verdict names its signing key")
        verdict = check_verdict(entry, {by}, now=now)
        if dkey != self.keys.verdict_key(verdict.node_id):
            raise RecordRejected("key", f"a verdict on {verdict.node_id} under another key")
        held = self.verdicts.get(dkey, {})
        old = held.get(by)
        if old is not None and verdict.issued_at <= old[0]:
            raise RecordRejected("replay", "not newer than the verdict held from that key")
        if old is None and len(held) >= MAX_VERDICTS_PER_NODE:
            raise RecordRejected("full", f"{MAX_VERDICTS_PER_NODE} keys' verdicts held already")
        held[by] = (verdict.issued_at, entry, value)
        self.verdicts[dkey] = held
        self.verdicts.move_to_end(dkey)
        while len(self.verdicts) > self.max_nodes:
            self.verdicts.popitem(last=False)

    def _purge(self, now: float) -> None:
        cutoff = now - self.ttl_s
        self.records = {k: v for k, v in self.records.items() if v[1] >= cutoff}
        self.index = {k: v for k, v in self.index.items() if v[0] >= cutoff}

    # the kademlia storage interface ----------------------------------------------------------

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.accept(key, value)

    def get(self, key: Any, default: Any = None) -> Any:
        self._purge(time.time())
        if key == self.keys.index:
            if not self.index:
                return default
            members = [[node_id, issued] for node_id, (issued, _) in self.index.items()]
            return self.keys.seal(key, json.dumps({"members": members}).encode())
        if isinstance(key, bytes) and key in self.verdicts:
            answer, size = [], 0
            for _, entry, sealed in sorted(self.verdicts[key].values(), key=lambda v: -v[0]):
                size += len(sealed)
                if size > MAX_ANSWER_BYTES:
                    break
                answer.append(entry)
            return self.keys.seal(key, json.dumps({"verdicts": answer}).encode())
        held = self.records.get(key) if isinstance(key, bytes) else None
        return held[2] if held else default

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored value as a store request would carry it (kademlia hands these to peers
        that join closer to a key)."""
        self._purge(time.time())
        items = [(k, v[2]) for k, v in self.records.items()]
        items += [(self.keys.index, sealed) for _, sealed in self.index.values()]
        items += [(k, sealed) for k, held in self.verdicts.items() for _, _, sealed in
                  held.values()]
        return iter(items)

    def iter_older_than(self, seconds_old: float) -> list:
        return []  # records live for seconds and are re-announced by their nodes


def _address_ok(host: Any) -> bool:
    """A contact's address as a peer may hand it over: a unicast IPv4 address (anything else,
    e.g. a string with a NUL, made the socket's `sendto` raise and asyncio close the transport
    for good)."""
    try:
        address = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return False
    return (address.version == 4 and not address.is_unspecified and not address.is_multicast
            and str(address) == host)


def _node_tuple(item: Any) -> bool:
    return (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], bytes)
            and len(item[0]) == KEY_BYTES and isinstance(item[1], str) and _address_ok(item[1])
            and isinstance(item[2], int) and 0 < item[2] < 65536)


class SwarmProtocol(KademliaProtocol):
    """Kademlia's protocol with every input checked: stores go through `SwarmStorage.accept`,
    malformed requests and answers are dropped instead of raising in the event loop.

    A peer that did not answer is dropped from the routing table (kademlia does that) and also
    from the contacts other peers answer with, for `UNANSWERED_S` or until it is heard from
    again: those peers keep naming a dead peer until their own requests to it time out, and
    without this every lookup after a death spent a `timeout_s` on it again, round after round
    (announcements took longer than a record lives, and live nodes fell out of every view)."""

    def __init__(self, source_node: Node, storage: SwarmStorage, ksize: int,
                 timeout_s: float) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = timeout_s
        self.unanswered: OrderedDict[tuple[str, int], float] = OrderedDict()
        """(host, port) -> when a request to it last timed out (monotonic)."""

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) <= MAX_DATAGRAM:
            self.unanswered.pop(tuple(addr[:2]), None)  # it is alive after all
            super().datagram_received(data, addr)

    def _silent(self, host: str, port: int, now: float) -> bool:
        since = self.unanswered.get((host, port))
        return since is not None and now - since < UNANSWERED_S

    async def _solve_datagram(self, datagram: bytes, address: tuple) -> None:
        try:
            await super()._solve_datagram(datagram, address)
        except Exception as exc:  # a malformed datagram costs itself only
            log.debug("dropped a datagram from %s: %s", address, type(exc).__name__)

    async def _accept_request(self, msg_id: bytes, data: Any, address: tuple) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as exc:
            log.debug("dropped a request from %s: %s", address, type(exc).__name__)

    def welcome_if_new(self, node: Node) -> None:
        """Add a new contact to the routing table, and nothing more: kademlia's own version also
        sends the newcomer every stored value it should hold, which made each datagram with a
        fresh id cost a lookup per stored value (and turned this peer into a reflector). Records
        are re-announced by their nodes every few seconds, so nothing needs handing over."""
        if isinstance(node.id, bytes) and len(node.id) == KEY_BYTES and node.id != \
                self.source_node.id and _address_ok(node.ip) and self.router.is_new_node(node):
            self.router.add_contact(node)

    def rpc_store(self, sender: tuple, nodeid: Any, key: Any, value: Any) -> bool:
        if isinstance(nodeid, bytes) and len(nodeid) == KEY_BYTES:
            self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self.storage.accept(key, value)

    def handle_call_response(self, result: tuple, node: Node) -> tuple:
        """Kademlia's bookkeeping, after the answer is checked: anything but a list of node
        triples or a ``{"value": bytes}`` counts as no answer."""
        ok, data = result
        if ok and not (isinstance(data, (bool, bytes))
                       or (isinstance(data, dict) and set(data) == {"value"}
                           and isinstance(data["value"], bytes))
                       or (isinstance(data, list) and len(data) <= 64
                           and all(_node_tuple(n) for n in data))):
            result = (False, None)
        now = time.monotonic()
        if not result[0]:
            self.unanswered[(node.ip, node.port)] = now
            self.unanswered.move_to_end((node.ip, node.port))
            while len(self.unanswered) > MAX_UNANSWERED:
                self.unanswered.popitem(last=False)
        elif isinstance(data, list):
            result = (True, [n for n in data if not self._silent(n[1], n[2], now)])
        return super().handle_call_response(result, node)


class AllValuesCrawl(ValueSpiderCrawl):
    """Kademlia's value lookup (alpha peers a step, closer each step), answering every value
    the first step that finds a usable one was given, instead of the most common one: sealed
    values never repeat (random nonces), and the reader keeps the newest record that verifies.
    A value `usable` refuses (junk, sealed with another key, stale) does not end the lookup:
    the crawl goes on to the next closest peers, so a peer placed next to a key cannot hide
    its value by answering first. Nothing is stored back."""

    def __init__(self, protocol, node, peers, ksize, alpha, usable) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self.usable = usable

    async def _handle_found_values(self, values: list) -> list | None:
        good = [v for v in values if isinstance(v, bytes) and self.usable(v)]
        if good:
            return good
        if self.nearest.have_contacted_all():
            return None
        return await self.find()


class DhtPeer:
    """This process's DHT peer for one swarm: listen, join through the invite's peers, store,
    and read what the k closest peers hold."""

    def __init__(self, config: DhtConfig) -> None:
        self.config = config
        self.keys = SwarmKeys(config.invite)
        self.storage = SwarmStorage(self.keys, config.ttl_s, config.max_nodes)
        self.server = Server(ksize=config.ksize, alpha=config.alpha, storage=self.storage)
        self.server._create_protocol = lambda: SwarmProtocol(
            self.server.node, self.storage, config.ksize, config.rpc_timeout_s)
        self.address: Peer | None = None
        self._started = asyncio.Lock()
        self._lookups = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)
        for name in ("rpcudp.protocol", "kademlia.protocol"):
            # a peer that does not answer is routine in a DHT (it died); the library logs every
            # such request at ERROR and WARNING, which would bury the process's own log
            logging.getLogger(name).setLevel(logging.CRITICAL)

    @property
    def protocol(self) -> SwarmProtocol:
        return self.server.protocol

    async def start(self) -> "DhtPeer":
        """Listen (once) and try the bootstrap peers; joining is retried by `join`."""
        async with self._started:
            if self.address is None:
                await self.server.listen(self.config.port, self.config.host or "127.0.0.1")
                host, port = self.server.transport.get_extra_info("sockname")[:2]
                self.address = Peer(host=host, port=port)
                log.info("DHT peer of swarm %r on udp %s", self.keys.swarm, self.address)
                await self.join()
        return self

    def known_peers(self) -> int:
        return sum(len(b) for b in self.protocol.router.buckets)

    async def join(self) -> int:
        """Bootstrap through the invite's peers when this peer knows none (at start, and after
        every peer it knew went away); returns the peers known."""
        if self.known_peers() == 0:
            others = [(p.host, p.port) for p in self.config.invite.peers if p != self.address]
            if others:
                try:
                    await self.server.bootstrap(others)
                except Exception as exc:  # an unreachable bootstrap peer is normal
                    log.debug("bootstrap failed: %s", exc)
        return self.known_peers()

    async def _nearest(self, dkey: bytes) -> list[Node]:
        target = Node(dkey)
        nearest = self.protocol.router.find_neighbors(target, self.config.ksize)
        if not nearest:
            return []
        crawl = NodeSpiderCrawl(self.protocol, target, nearest, self.config.ksize,
                                self.config.alpha)
        return await crawl.find()

    async def put(self, dkey: bytes, value: bytes) -> int:
        """Store `value` here and on the k peers closest to `dkey`; how many accepted it."""
        stored = int(self.storage.accept(dkey, value))
        peers = await self._nearest(dkey)
        answers = await asyncio.gather(*(self.protocol.call_store(n, dkey, value)
                                         for n in peers))
        return stored + sum(1 for ok, data in answers if ok and data is True)

    async def get_all(self, dkey: bytes) -> list[bytes]:
        """What this peer and each of the k peers closest to `dkey` hold under it."""
        values = []
        local = self.storage.get(dkey)
        if local is not None:
            values.append(local)
        async with self._lookups:
            peers = await self._nearest(dkey)
            answers = await asyncio.gather(*(self.protocol.call_find_value(n, Node(dkey))
                                             for n in peers))
        values += [data["value"] for ok, data in answers if ok and isinstance(data, dict)]
        return values

    def _opens(self, dkey: bytes, sealed: bytes) -> Any:
        """The JSON sealed under `dkey`, or None when it does not open or parse."""
        try:
            return _strict_json(self.keys.open(dkey, sealed))
        except Exception:
            return None

    def _fresh_record(self, dkey: bytes, sealed: bytes) -> bool:
        """Whether `sealed` opens to a record issued within the records' lifetime (a peer that
        answers with an old copy does not end the lookup for the current one)."""
        record = self._opens(dkey, sealed)
        issued = record.get("issued_at") if isinstance(record, dict) else None
        return (isinstance(issued, (int, float)) and math.isfinite(issued)
                and time.time() - self.config.ttl_s <= issued <= time.time() + MAX_SKEW_S)

    async def get_some(self, dkey: bytes, usable=None) -> list[bytes]:
        """What this peer holds under `dkey` and what Kademlia's value lookup finds: a few
        datagrams where `get_all` sends ~2k. The lookup goes on past answers `usable` refuses
        (default: values that do not open with the swarm's key)."""
        local = self.storage.get(dkey)
        values = [local] if local is not None else []
        target = Node(dkey)
        nearest = self.protocol.router.find_neighbors(target, self.config.ksize)
        if usable is None:
            def usable(v: bytes) -> bool:
                return self._opens(dkey, v) is not None
        if nearest:
            async with self._lookups:
                found = await AllValuesCrawl(self.protocol, target, nearest, self.config.ksize,
                                             self.config.alpha, usable).find()
            values += [v for v in found or [] if isinstance(v, bytes)]
        return values

    async def announce(self, signed_record: dict[str, Any]) -> int:
        """Store a node's signed record under its key and in the index; the peers (this one
        included) that accepted the index entry."""
        await self.join()
        plain = json.dumps(signed_record, separators=(",", ":")).encode()
        node_key = self.keys.node_key(str(signed_record.get("node_id")))
        for_node, for_index = (self.keys.seal(node_key, plain),
                               self.keys.seal(self.keys.index, plain))
        if len(for_node) > MAX_VALUE_BYTES:
            raise RecordRejected("size", f"a record of {len(plain)} bytes does not fit a "
                                 "datagram")
        _, accepted = await asyncio.gather(self.put(node_key, for_node),
                                           self.put(self.keys.index, for_index))
        return accepted

    async def member_ids(self) -> dict[str, float]:
        """Node id -> newest issue time, merged from every index the closest peers hold.

        A listing is only its peer's claim, so each entry is checked (a node id's form, an issue
        time within the records' lifetime), a peer's malformed answer costs that answer only,
        only ids named by at least half of the listings are kept, at most `max_nodes`, those
        named by the most first (an honest node is in every storing peer's index; ids a lying
        peer invents are in its own)."""
        members: dict[str, float] = {}
        named: dict[str, int] = {}
        listings = 0
        now = time.time()
        for sealed in await self.get_all(self.keys.index):
            listing = self._opens(self.keys.index, sealed)
            entries = listing.get("members") if isinstance(listing, dict) else None
            if not isinstance(entries, list):
                continue  # a peer's bad answer costs its own answer only
            listings += 1
            seen: set[str] = set()
            for entry in entries[:self.config.max_nodes]:
                try:
                    node_id, issued = entry
                    issued = float(issued)
                except Exception:
                    continue
                if not (isinstance(node_id, str) and _NODE_ID.fullmatch(node_id)
                        and math.isfinite(issued)
                        and now - self.config.ttl_s <= issued <= now + MAX_SKEW_S):
                    continue
                if node_id not in seen:
                    seen.add(node_id)
                    named[node_id] = named.get(node_id, 0) + 1
                members[node_id] = max(issued, members.get(node_id, 0.0))
        # an honest node's announcement reaches every one of the k closest peers, so it is in
        # most listings; ids in fewer than half were invented by the peers that list them (who
        # would otherwise make each refresh spend a lookup on every one)
        quorum = (listings + 1) // 2
        keep = sorted((i for i in members if named[i] >= quorum),
                      key=lambda i: (-named[i], -members[i]))[:self.config.max_nodes]
        return {i: members[i] for i in keep}

    async def records(self) -> list[Any]:
        """The records found for the indexed members, opened but not yet verified (readers
        verify each one). The index is read from every one of the k closest peers (so nobody
        can hide a member); a member's record by Kademlia's value lookup (a stale or withheld
        copy is outweighed by any newer one found)."""
        ids = list(await self.member_ids())
        found = await asyncio.gather(*(self.get_some(
            self.keys.node_key(i), functools.partial(self._fresh_record, self.keys.node_key(i)))
            for i in ids))
        out = []
        for node_id, values in zip(ids, found):
            for sealed in values:
                try:
                    out.append(_strict_json(self.keys.open(self.keys.node_key(node_id),
                                                           sealed)))
                except (InviteError, RecordRejected):
                    continue
        return out

    async def post_verdict(self, signed_verdict: dict[str, Any]) -> int:
        """Store a signed verdict under its node's verdict key; the peers that accepted it."""
        dkey = self.keys.verdict_key(str(signed_verdict.get("node_id")))
        sealed = self.keys.seal(dkey, json.dumps(signed_verdict, separators=(",", ":")).encode())
        if len(sealed) > MAX_VALUE_BYTES:
            raise RecordRejected("size", f"a verdict of {len(sealed)} bytes does not fit a "
                                 "datagram")
        return await self.put(dkey, sealed)

    async def verdicts(self, node_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Node id -> the verdicts found about it, opened but not verified (readers weigh
        them: `serve.discovery.weigh_verdicts`)."""
        found = await asyncio.gather(*(self.get_some(self.keys.verdict_key(i))
                                       for i in node_ids))
        out: dict[str, list[dict[str, Any]]] = {}
        for node_id, values in zip(node_ids, found):
            for sealed in values:
                try:
                    listing = _strict_json(self.keys.open(self.keys.verdict_key(node_id), sealed))
                    posted = listing["verdicts"][:MAX_VERDICTS_PER_NODE]
                except (InviteError, RecordRejected, KeyError, TypeError):
                    continue
                held = out.setdefault(node_id, [])
                seen = {v.get("signature") for v in held}
                held.extend(v for v in posted if isinstance(v, dict) and
                            v.get("signature") not in seen)  # each peer answers the same ones
        return out

    def stop(self) -> None:
        self.server.stop()
