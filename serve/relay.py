"""A latency relay: a TCP proxy on loopback that delays every chunk by a fixed one-way time.

This machine's kernel has no `netem`, so links are emulated in user space: each hop's connection
goes through a relay that holds every chunk for `delay_ms` in each direction, preserving order
and without serialising chunks behind each other's delay (a chunk read at t leaves at t + delay).
Any transport is measured under the same link.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path


class Delay:
    """The current one-way delay in seconds: fixed, or read from a file that may change
    (so a benchmark can sweep delays without restarting the swarm)."""

    def __init__(self, ms: float, path: Path | None = None) -> None:
        self._seconds, self._path = ms / 1000.0, path
        self._checked = 0.0

    def seconds(self) -> float:
        now = time.monotonic()
        if self._path is not None and now - self._checked > 0.05:
            self._checked = now
            try:
                self._seconds = float(self._path.read_text()) / 1000.0
            except (OSError, ValueError):
                pass
        return self._seconds


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def sender() -> None:
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(sender())
    try:
        while data := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + delay.seconds(), data))
    except (ConnectionError, asyncio.CancelledError):
        pass
    queue.put_nowait((0.0, None))
    try:
        await task
    except ConnectionError:
        pass


async def start_relay(listen_port: int, target_host: str, target_port: int, delay: Delay,
                      host: str = "127.0.0.1") -> asyncio.AbstractServer:
    async def handle(client_r, client_w) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, upstream_w, delay), _pump(upstream_r, client_w, delay))

    return await asyncio.start_server(handle, host, listen_port)


def run_relays(routes: list[tuple[int, int]], delay_ms: float, delay_file: Path | None = None
               ) -> None:
    """Blocking: relay each (listen_port -> target_port) on 127.0.0.1 with the given delay."""

    async def main() -> None:
        delay = Delay(delay_ms, delay_file)
        servers = [await start_relay(a, "127.0.0.1", b, delay) for a, b in routes]
        await asyncio.gather(*(s.serve_forever() for s in servers))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
