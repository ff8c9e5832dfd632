"""The link pool keeps at most `max_links` connections: reply addresses come from tickets anyone
with a key may sign, so they cannot make a node hold a connection per address forever."""

from __future__ import annotations

import asyncio

from serve.links import Links


def test_the_pool_closes_the_least_recently_used_links_beyond_its_bound():
    from websockets.asyncio.server import serve

    async def run() -> None:
        received: list[bytes] = []
        open_now = set()

        async def handler(ws):
            open_now.add(ws)
            try:
                async for frame in ws:
                    received.append(frame)
            finally:
                open_now.discard(ws)

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            links = Links(max_links=3)
            for i in range(8):  # eight reply addresses, as eight tickets could name
                await links.send(f"ws://127.0.0.1:{port}/reply/{i}", b"frame %d" % i)
            await links.send(f"ws://127.0.0.1:{port}/reply/7", b"again")  # reused, not redialled
            for _ in range(100):
                if len(open_now) <= 3:
                    break
                await asyncio.sleep(0.02)
            assert len(links._conns) == 3 and len(open_now) == 3
            assert len(received) == 9 and received[-1] == b"again"
            await links.close()

    asyncio.run(run())
