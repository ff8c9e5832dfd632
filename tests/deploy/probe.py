"""Run on one host of the deployment test; prints one JSON object.

    python -m tests.deploy.probe dial HOST PORT      # can a TCP connection to HOST:PORT be opened?
    python -m tests.deploy.probe pings TRACKER N     # per node the tracker lists: N pings on one
                                                     # pinned connection (its signed URL, so a
                                                     # relayed node's go through its relay)
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
import uuid


def dial(host: str, port: str) -> dict:
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        return {"open": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"open": True}


async def _trip(conn) -> float:
    from serve import wire

    ping = wire.Ping(uuid.uuid4().hex)
    t0 = time.perf_counter()
    await conn.send(wire.encode(ping))
    while True:
        message, _ = wire.decode(await conn.recv())
        if getattr(message, "request_id", None) == ping.request_id:
            return 1000 * (time.perf_counter() - t0)


async def sessions_of(node: dict) -> int:
    """The sessions `node` (a tracker entry) has open now, from its signed pong."""
    from serve import wire
    from serve.transport import dial

    conn = await dial(node["url"], node["public_key"], compression=None, ping_interval=None)
    try:
        ping = wire.Ping(uuid.uuid4().hex)
        await conn.send(wire.encode(ping))
        while True:
            message, _ = wire.decode(await conn.recv())
            if isinstance(message, wire.Pong) and message.request_id == ping.request_id:
                return int(message.stats.get("sessions", 0))
    finally:
        await conn.close()


async def pings(tracker_url: str, n: str, rounds: int = 10) -> dict:
    """Per node: the time to open the connection and ping round trips (ms). The nodes take
    turns, `n` / `rounds` pings each per round, so drift in the shared machine's load hits
    every node alike."""
    import httpx

    from serve.transport import dial

    nodes = httpx.get(f"{tracker_url}/nodes", timeout=5).json()
    conns, out, trips = {}, {}, {node["node_id"]: [] for node in nodes}
    try:
        for node in nodes:
            t0 = time.perf_counter()
            conns[node["node_id"]] = await dial(node["url"], node["public_key"],
                                                compression=None, ping_interval=None)
            out[node["node_id"]] = {"url": node["url"],
                                    "connect_ms": round(1000 * (time.perf_counter() - t0), 2)}
        for _ in range(rounds):
            for node_id, conn in conns.items():
                trips[node_id] += [await _trip(conn) for _ in range(int(n) // rounds)]
    finally:
        for conn in conns.values():
            await conn.close()
    for node_id, values in trips.items():
        values.sort()
        out[node_id].update(median_ms=round(statistics.median(values), 3),
                            p90_ms=round(values[int(0.9 * (len(values) - 1))], 3))
    return out


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    result = dial(*args) if what == "dial" else asyncio.run(pings(*args))
    print(json.dumps(result))
