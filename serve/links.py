"""Persistent websocket connections to peers, one per address, dialled on first use.

Both nodes (to their next hops and to gateways) and gateways (to first hops) send through a
`Links` pool. A send on a connection the peer has closed is retried once on a fresh connection, so
a restarted peer or relay costs one reconnect, not a failed request.

A ``wss://`` peer is dialled only with the key its signed record or ticket names, and a connection
is reused only for that same key (serve/transport.py pins the TLS certificate to it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from serve import wire
from serve.exceptions import WireError

CONNECT_TIMEOUT_S = 5.0
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
                 max_size: int = 64 << 20, allow_plain: bool = False) -> None:
        self.max_size = max_size
        """Largest frame accepted back on these links."""
        self.allow_plain = allow_plain
        """Whether ``ws://`` may be dialled off loopback (`TlsMode` ``off``)."""
        self._conns: dict[tuple[str, str], object] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._on_connect = on_connect
        self._readers: set[asyncio.Task] = set()

    async def _connection(self, url: str, peer_key: str, fresh: bool):
        from serve.transport import dial

        link = (url, peer_key)
        async with self._locks.setdefault(link, asyncio.Lock()):
            conn = None if fresh else self._conns.get(link)
            if conn is None:
                conn = await asyncio.wait_for(dial(url, peer_key, allow_plain=self.allow_plain,
                                                   max_size=self.max_size, max_queue=4,
                                                   compression=None, ping_interval=None),
                                              timeout=CONNECT_TIMEOUT_S)
                self._conns[link] = conn
                if self._on_connect is not None:  # e.g. read replies arriving on this link
                    task = asyncio.create_task(self._on_connect(conn))
                    self._readers.add(task)
                    task.add_done_callback(self._readers.discard)
            return conn

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

    async def close(self) -> None:
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()
