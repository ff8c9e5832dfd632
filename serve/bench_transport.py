"""`shoal bench transport`: what TLS between hosts costs a hop, against plain websockets.

An echo peer runs in a process of its own with two ports, one plain ``ws://`` and one ``wss://``
(serve/transport.py: TLS 1.3, a certificate of an Ed25519 identity key, pinned by the dialer). The
benchmark process dials both and, round after round, alternating which goes first so drift hits
both alike, times round trips of frames the size of real hop frames (one token's hidden state,
a prefill's) and new connections (TCP, then the TLS handshake and the websocket upgrade). Per
round it takes the median of each side; the report gives medians over rounds and the ratio
wss / ws with a 95 % bootstrap interval over rounds (the rounds are few).

Both ends share this machine's cores with whatever else runs: the load average is recorded, and
only the ratio, measured side by side, is meant to carry over.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

SMOLLM2_HIDDEN = 576
"""SmolLM2-135M's hidden size: a float32 hidden state of one token is 4 × 576 bytes."""


@dataclass
class TransportBenchConfig:
    sizes: list[int] = field(default_factory=lambda: [4 * SMOLLM2_HIDDEN,
                                                      4 * SMOLLM2_HIDDEN * 128])
    """Frame sizes in bytes (default: one token, and a 128-token prefill, of SmolLM2 in fp32)."""
    rounds: int = 10
    trips: int = 50
    """Round trips per size, side and round."""
    connects: int = 10
    """New connections per side and round."""
    out_dir: Path = Path("bench-out")


def _echo_peer(conn) -> None:
    """The far end (a child process): echo every frame on a ws:// and a wss:// port."""
    from registry.signing import SigningKey
    from serve.transport import server_context

    key = SigningKey.generate("bench-peer")

    async def main() -> None:
        from websockets.asyncio.server import serve

        async def echo(ws) -> None:
            async for frame in ws:
                await ws.send(frame)

        options = dict(max_size=None, compression=None, ping_interval=None)
        async with serve(echo, "127.0.0.1", 0, **options) as plain, \
                serve(echo, "127.0.0.1", 0, ssl=server_context(key), **options) as tls:
            conn.send((plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1],
                       key.public_hex))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told

    asyncio.run(main())


async def _trips(url: str, key: str | None, frame: bytes, n: int) -> list[float]:
    from serve.transport import dial

    conn = await dial(url, key, max_size=None, compression=None, ping_interval=None)
    try:
        await conn.send(frame)  # warm up (first frame, buffers)
        await conn.recv()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await conn.send(frame)
            await conn.recv()
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await conn.close()


async def _connects(url: str, key: str | None, n: int) -> list[float]:
    from serve.transport import dial

    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = await dial(url, key, compression=None, ping_interval=None)
        out.append(time.perf_counter() - t0)
        await conn.close()
    return out


def _ratio(wss: list[float], ws: list[float], boot: int = 2000) -> dict:
    """Median over rounds of wss/ws per round, and a bootstrap 95 % interval over rounds."""
    import numpy as np

    per_round = np.asarray(wss) / np.asarray(ws)
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(per_round, (boot, len(per_round))), axis=1)
    return {"median": round(float(np.median(per_round)), 3),
            "ci95": [round(float(np.quantile(medians, 0.025)), 3),
                     round(float(np.quantile(medians, 0.975)), 3)]}


async def _measure(cfg: TransportBenchConfig, ports: tuple[int, int], key: str) -> dict:
    sides = {"ws": (f"ws://127.0.0.1:{ports[0]}", None),
             "wss": (f"wss://127.0.0.1:{ports[1]}", key)}
    trips = {size: {s: [] for s in sides} for size in cfg.sizes}
    connects: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(cfg.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for size in cfg.sizes:
            frame = os.urandom(size)
            for side in order:
                url, pin = sides[side]
                trips[size][side].append(statistics.median(
                    await _trips(url, pin, frame, cfg.trips)))
        for side in order:
            url, pin = sides[side]
            connects[side].append(statistics.median(await _connects(url, pin, cfg.connects)))

    def ms(values: list[float]) -> float:
        return round(1000 * statistics.median(values), 3)

    return {"round_trip": {str(size): {"ws_ms": ms(t["ws"]), "wss_ms": ms(t["wss"]),
                                       "ratio": _ratio(t["wss"], t["ws"])}
                           for size, t in trips.items()},
            "connect": {"ws_ms": ms(connects["ws"]), "wss_ms": ms(connects["wss"]),
                        "ratio": _ratio(connects["wss"], connects["ws"])}}


def run_transport_bench(cfg: TransportBenchConfig) -> dict:
    """Writes `transport.json` and `transport.png` to `cfg.out_dir`; returns the report."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    peer = ctx.Process(target=_echo_peer, args=(child,), daemon=True)
    peer.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the echo peer did not start within 60 s")
        plain, tls, key = parent.recv()
        load = os.getloadavg()[0]
        summary = asyncio.run(_measure(cfg, (plain, tls), key))
    finally:
        parent.send("stop")
        peer.join(timeout=10)
        if peer.is_alive():
            peer.kill()
    report = {"config": {"sizes": cfg.sizes, "rounds": cfg.rounds, "trips": cfg.trips,
                         "connects": cfg.connects, "load_average": load,
                         "cpus": os.cpu_count()},
              "summary": summary}
    (cfg.out_dir / "transport.json").write_text(json.dumps(report, indent=1))
    _plot(summary, cfg.out_dir / "transport.png")
    return report


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{int(s) // 1024 or int(s)} {'KiB' if int(s) >= 1024 else 'B'} round trip"
              for s in summary["round_trip"]] + ["new connection"]
    rows = [*summary["round_trip"].values(), summary["connect"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["ws_ms"] for r in rows], 0.4, label="ws://")
    ax.bar([i + 0.2 for i in x], [r["wss_ms"] for r in rows], 0.4, label="wss:// (pinned)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("median ms")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
