"""Discovery without a tracker: `DhtDiscovery` reads the swarm's signed node records from its DHT
(serve/dht.py), and `announce_forever` is a node's side, storing its record there again and again
before it expires.

A reader trusts the DHT no more than the tracker: every record it is handed goes through the same
`RecordFilter` as the tracker's listing (id = hash of key, signature, canonical form, issued
within the DHT's record TTL, never older than one already read from that node). A node that stops
announcing drops out of the view once its last record is older than the TTL, so a dead node
leaves routes within ``ttl_s + refresh_s``; a node that comes back is a new entry to the
gateway's verifier, which checks it before it carries traffic like any node new to that gateway.

Verdicts are signed claims each gateway weighs, never orders: `report` signs one with this
gateway's key, keeps it (the node is evicted here at once) and posts it to the DHT; every
`VERDICT_REFRESH_S` a reader looks up the verdicts about the nodes it lists. One signed by this
reader's key or a `trusted_verdict_keys` key evicts; any other is a claim in `NodeInfo.claims`, a
reason for the verifier to check the node again at once.

The view is refreshed in the background every `refresh_s`, so a route never waits on the DHT.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Iterable

from serve.config import DhtConfig
from serve.dht import DhtPeer
from serve.discovery import (MAX_VERDICTS_PER_NODE, NodeInfo, RecordFilter, split_reason,
                             weigh_verdicts)
from serve.exceptions import RecordRejected, VerdictNotPosted
from registry.signing import canonical_json
from serve.records import NodeRecord, sign_record, sign_verdict

if TYPE_CHECKING:
    from registry.signing import SigningKey

log = logging.getLogger("shoal.dht")
VERDICT_REFRESH_S = 10.0
"""Seconds between a reader's lookups of the verdicts about the nodes it lists."""
_peers: dict[str, DhtPeer] = {}


def peer_for(config: DhtConfig, host: str = "127.0.0.1") -> DhtPeer:
    """The one DHT peer of this process for `config` (a gateway's runtimes share it), bound to
    `config.host` or else to `host`, the process's own address."""
    config = config if config.host else config.model_copy(update={"host": host})
    name = config.model_dump_json()
    if name not in _peers:
        _peers[name] = DhtPeer(config)
    return _peers[name]


async def look_once(config: DhtConfig, host: str = "0.0.0.0") -> tuple[list[NodeInfo], int]:
    """One verified lookup through a temporary peer of its own (any free port; bound to
    `config.host` or else `host`), stopped after: the nodes a gateway would read now, and how
    many peers the lookup knew (`shoal status --join`, `shoal node --layers auto`)."""
    reader = DhtDiscovery(DhtPeer(config.model_copy(update={"port": 0,
                                                            "host": config.host or host})))
    try:
        await reader.refresh()
        return reader.listed(), reader.peer.known_peers()
    finally:
        reader.peer.stop()


class DhtDiscovery:
    """`serve.discovery.Discovery` over a swarm's DHT, verifying every record it reads."""

    def __init__(self, peer: DhtPeer, *, key: SigningKey | None = None,
                 trusted_verdict_keys: Iterable[str] = ()) -> None:
        """`key` signs this gateway's verdicts (without one, `report` raises); verdicts by `key`
        and by `trusted_verdict_keys` evict."""
        self.peer = peer
        self.key = key
        self.trusted = frozenset(k.lower() for k in trusted_verdict_keys) | (
            {key.public_hex} if key is not None else set())
        self.ttl_s = peer.config.ttl_s
        self._records = RecordFilter(f"the DHT of swarm {peer.keys.swarm!r}", self.ttl_s)
        self._view: list[tuple[NodeRecord, dict[str, Any]]] = []
        self._verdicts: dict[str, list[dict[str, Any]]] = {}
        """Verdicts this gateway signed, by node id."""
        self._posted: dict[str, list[dict[str, Any]]] = {}
        """Verdicts found in the DHT, by node id (weighed, never obeyed as such)."""
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.refreshes = 0
        """Completed lookups of the swarm's records (benchmarks read it)."""

    async def nodes(self) -> list[NodeInfo]:
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever())
        await self._ready.wait()
        return self.listed()

    def listed(self) -> list[NodeInfo]:
        """The view as it stands: no lookup, and no background refresh started."""
        now = time.time()
        return [weigh_verdicts(record, {**entry, "last_seen": record.issued_at,
                                        "verdicts": self._verdicts_about(record.node_id)},
                               self.trusted, now)
                for record, entry in self._view if record.issued_at >= now - self.ttl_s]

    def _verdicts_about(self, node_id: str) -> list[dict[str, Any]]:
        """Own verdicts first, then the DHT's (the same verdict once)."""
        own = self._verdicts.get(node_id, [])
        signatures = {v.get("signature") for v in own}
        posted = [v for v in self._posted.get(node_id, []) if v.get("signature") not in
                  signatures]
        return (own + posted)[:MAX_VERDICTS_PER_NODE]

    async def refresh(self) -> None:
        """Look the swarm's records up now: the view becomes the ones that verify, plus the
        unexpired records of nodes this lookup missed (a lost datagram is not a departure)."""
        await self.peer.start()
        await self.peer.join()
        entries = await self.peer.records()
        now = time.time()
        fresh = {record.node_id: (record, entry)
                 for record, entry in self._records.select(entries, now)}
        for record, entry in self._view:
            if record.node_id not in fresh and record.issued_at >= now - self.ttl_s:
                fresh[record.node_id] = (record, entry)
        self._view = list(fresh.values())
        self.refreshes += 1

    async def refresh_verdicts(self) -> None:
        """Look up the verdicts posted about the nodes in the view."""
        self._posted = await self.peer.verdicts([record.node_id for record, _ in self._view])

    async def _refresh_forever(self) -> None:
        """The view every `refresh_s`; the verdicts every `VERDICT_REFRESH_S`, beside it (a
        lookup of a key nobody holds asks all k peers, so they must not delay the view)."""
        verdicts: asyncio.Task | None = None
        next_verdicts = 0.0
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a DHT hiccup keeps the last view (it expires by itself)
                log.warning("DHT lookup failed: %s", exc)
            finally:
                self._ready.set()
            if time.monotonic() >= next_verdicts and (verdicts is None or verdicts.done()):
                next_verdicts = time.monotonic() + VERDICT_REFRESH_S
                verdicts = asyncio.create_task(self._read_verdicts())
            await asyncio.sleep(self.peer.config.refresh_s)

    async def _read_verdicts(self) -> None:
        try:
            await self.refresh_verdicts()
        except Exception as exc:
            log.warning("DHT verdict lookup failed: %s", exc)

    async def report(self, node_id: str, status: str, check: str, detail: str = "",
                     evidence: dict | None = None) -> None:
        """Sign a verdict with this gateway's key, keep it (the node is evicted here) and post
        it to the DHT for other gateways to weigh; raises `VerdictNotPosted` without a key or
        when no peer stored it. Evidence too large for a datagram is posted as its digest."""
        if self.key is None:
            raise VerdictNotPosted(f"no signing key to sign the verdict on {node_id}")
        check, detail = split_reason(check, detail)
        signed = sign_verdict(self.key, node_id, status, check, detail, evidence)
        kept = self._verdicts.setdefault(node_id, [])
        kept.append(signed)
        del kept[:-MAX_VERDICTS_PER_NODE]
        try:
            stored = await self.peer.post_verdict(signed)
        except RecordRejected:
            digest = hashlib.sha256(canonical_json(evidence or {})).hexdigest()
            stored = await self.peer.post_verdict(sign_verdict(
                self.key, node_id, status, check, detail[:500],
                {"omitted": "too large for the DHT", "sha256": digest}))
        if stored == 0:
            raise VerdictNotPosted(f"no DHT peer stored the verdict on {node_id}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def announce_forever(peer: DhtPeer, key: SigningKey,
                           info: Callable[[], dict[str, Any]]) -> None:
    """A node's announcements: its freshly signed record every `announce_s`, for as long as it
    runs (a failed round is logged and the next one tries again). The period runs from one
    announcement's start to the next, so a slow round (a peer died and its requests time out)
    does not also push the next one back."""
    await peer.start()
    while True:
        started = time.monotonic()
        try:
            accepted = await peer.announce(sign_record(key, info()))
            if accepted <= 1:
                log.info("the record is held by this peer only (no other DHT peer yet)")
        except Exception as exc:
            log.warning("DHT announcement failed: %s", exc)
        await asyncio.sleep(max(0.05, peer.config.announce_s - (time.monotonic() - started)))
