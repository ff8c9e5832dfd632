"""Persistent websocket connections to peers, one per address, dialled on first use.

Both nodes (to their next hops and to gateways) and gateways (to first hops) send through a
`Links` pool. A send on a connection the peer has closed is retried once on a fresh connection, so
a restarted peer or relay costs one reconnect, not a failed request.

A ``wss://`` peer is dialled only with the key its signed record or ticket names, and a connection
is reused only for that same key (serve/transport.py pins the TLS certificate to it).

The pool holds at most `max_links` connections, least recently used closed first: the addresses a
node dials for replies come from tickets anyone with a key may sign, so they must not be able to
make it hold a descriptor (and a reader task) per address forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from serve import wire
from serve.exceptions import WireError

CONNECT_TIMEOUT_S = 5.0
MAX_LINKS = 256
"""Connections a pool keeps open at most."""
log = logging.getLogger("shoal.links")


async def incoming(ws) -> AsyncIterator[tuple[wire.Message, object]]:
    """Decoded frames arriving on a connection until it closes; undecodable frames are logged
    and skipped (a peer speaking another protocol version cannot derail the loop)."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for frame in ws:
            try:
                yield wire.decode(frame)
            except WireError as exc:
                log.warning("bad frame: %s", exc)
    except ConnectionClosed:
        return


class Links:
    def __init__(self, on_connect: Callable[[object], Awaitable[None]] | None = None,
                 max_size: int = 64 << 20, allow_plain: bool = False,
                 max_links: int = MAX_LINKS,
                 on_close: Callable[[tuple[str, str]], None] | None = None) -> None:
        self.max_size = max_size
        """Largest frame accepted back on these links."""
        self.allow_plain = allow_plain
        """Whether ``ws://`` may be dialled off loopback (`TlsMode` ``off``)."""
        self._conns: OrderedDict[tuple[str, str], object] = OrderedDict()
        """(url, peer key) -> connection, least recently used first."""
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.max_links = max_links
        self._on_connect = on_connect
        self._on_close = on_close
        """Called with (url, peer key) when the peer closes an open link (the reader that
        `on_connect` started ends while the link is still in the pool): the link is dropped
        from the pool first, so the next send dials afresh."""
        self._readers: set[asyncio.Task] = set()

    async def _connection(self, url: str, peer_key: str, fresh: bool):
        from serve.transport import dial

        link = (url, peer_key)
        async with self._locks.setdefault(link, asyncio.Lock()):
            conn = None if fresh else self._conns.get(link)
            if conn is not None:
                self._conns.move_to_end(link)
            else:
                conn = await asyncio.wait_for(dial(url, peer_key, allow_plain=self.allow_plain,
                                                   max_size=self.max_size, max_queue=4,
                                                   compression=None, ping_interval=None),
                                              timeout=CONNECT_TIMEOUT_S)
                self._conns[link] = conn
                self._conns.move_to_end(link)
                self._trim()
                if self._on_connect is not None:  # e.g. read replies arriving on this link
                    task = asyncio.create_task(self._on_connect(conn))
                    self._readers.add(task)
                    task.add_done_callback(self._readers.discard)
                    if self._on_close is not None:
                        task.add_done_callback(lambda _, link=link, conn=conn:
                                               self._closed(link, conn))
            return conn

    def _closed(self, link: tuple[str, str], conn: object) -> None:
        if self._conns.get(link) is conn:  # not one this pool closed itself (trimmed, replaced)
            del self._conns[link]
            self._on_close(link)

    async def connect(self, url: str, peer_key: str = "") -> None:
        """Open the connection to `url` now if none is open (what `send` would dial first)."""
        await self._connection(url, peer_key, fresh=False)

    async def send(self, url: str, frame: bytes, peer_key: str = "") -> None:
        """Send `frame` to `url`, whose TLS certificate must carry `peer_key` (hex) for
        ``wss://``; raises if the peer cannot be reached even on a new connection
        (`TransportRefused` for a refused dial)."""
        from websockets.exceptions import ConnectionClosed

        conn = await self._connection(url, peer_key, fresh=False)
        try:
            await conn.send(frame)
        except (ConnectionClosed, OSError):
            self._conns.pop((url, peer_key), None)
            conn = await self._connection(url, peer_key, fresh=True)
            await conn.send(frame)

    def _trim(self) -> None:
        """Close the least recently used connections beyond `max_links`, and forget the locks
        of links that are neither open nor being dialled."""
        while len(self._conns) > self.max_links:
            _, old = self._conns.popitem(last=False)
            task = asyncio.create_task(old.close())
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
        if len(self._locks) > 2 * self.max_links:
            for link in [k for k, lock in self._locks.items()
                         if k not in self._conns and not lock.locked()]:
                del self._locks[link]

    async def close(self) -> None:
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()
