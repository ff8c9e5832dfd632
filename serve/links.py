"""Persistent websocket connections to peers, one per address, dialled on first use.

Both nodes (to their next hops and to gateways) and gateways (to first hops) send through a
`Links` pool. A send on a connection the peer has closed is retried once on a fresh connection, so
a restarted peer or relay costs one reconnect, not a failed request.
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
                 max_size: int = 64 << 20) -> None:
        self.max_size = max_size
        """Largest frame accepted back on these links."""
        self._conns: dict[str, object] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._on_connect = on_connect
        self._readers: set[asyncio.Task] = set()

    async def _connection(self, url: str, fresh: bool):
        from websockets.asyncio.client import connect

        async with self._locks.setdefault(url, asyncio.Lock()):
            conn = None if fresh else self._conns.get(url)
            if conn is None:
                conn = await asyncio.wait_for(connect(url, max_size=self.max_size, max_queue=4,
                                                      compression=None, ping_interval=None),
                                              timeout=CONNECT_TIMEOUT_S)
                self._conns[url] = conn
                if self._on_connect is not None:  # e.g. read replies arriving on this link
                    task = asyncio.create_task(self._on_connect(conn))
                    self._readers.add(task)
                    task.add_done_callback(self._readers.discard)
            return conn

    async def send(self, url: str, frame: bytes) -> None:
        """Send `frame` to `url`; raises if the peer cannot be reached even on a new connection."""
        from websockets.exceptions import ConnectionClosed

        conn = await self._connection(url, fresh=False)
        try:
            await conn.send(frame)
        except (ConnectionClosed, OSError):
            self._conns.pop(url, None)
            conn = await self._connection(url, fresh=True)
            await conn.send(frame)

    async def close(self) -> None:
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()
