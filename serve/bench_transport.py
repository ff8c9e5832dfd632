"""`shoal bench transport`: what TLS between hosts costs a hop, against plain websockets, and what
the NAT relay's detour adds on top.

An echo peer runs in a process of its own with two ports, one plain ``ws://`` and one ``wss://``
(serve/transport.py: TLS 1.3, a certificate of an Ed25519 identity key, pinned by the dialer), and
reaches a NAT relay (serve/nat_relay.py, in a third process) with offers for its TLS port, as a
node behind NAT does. The benchmark process dials all three ways and, round after round, alternating which goes first so drift hits
both alike, times round trips of frames the size of real hop frames (one token's hidden state,
a prefill's) and new connections (TCP, then the TLS handshake and the websocket upgrade). Per
round it takes the median of each side; the report gives medians over rounds and the ratios
wss / ws and relayed / wss with 95 % bootstrap intervals over rounds (the rounds are few). On
loopback the relay's legs cost nothing, so what it measures is the relay's and the node's copies.

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


def _relay_process(conn) -> None:
    """A NAT relay on a free loopback port (a child process); sends its port."""
    from serve.nat_relay import Relay, RelayConfig

    async def main() -> None:
        relay = Relay(RelayConfig(host="127.0.0.1", port=0))
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told

    asyncio.run(main())


def _echo_peer(conn, relay_port: int) -> None:
    """The far end (a child process): echo every frame on a ws:// and a wss:// port, and keep
    offers for the wss:// port at the relay."""
    from registry.signing import SigningKey
    from serve.nat_relay import Offers
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
            tls_port = tls.sockets[0].getsockname()[1]
            offers = asyncio.create_task(Offers(f"127.0.0.1:{relay_port}", key, tls_port).run())
            conn.send((plain.sockets[0].getsockname()[1], tls_port, key.public_hex))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told
            offers.cancel()

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


async def _measure(cfg: TransportBenchConfig, ports: tuple[int, int, int], key: str) -> dict:
    from serve.records import node_id_of

    sides = {"ws": (f"ws://127.0.0.1:{ports[0]}", None),
             "wss": (f"wss://127.0.0.1:{ports[1]}", key),
             "relayed": (f"wss://127.0.0.1:{ports[2]}/via/{node_id_of(key)}", key)}
    trips = {size: {s: [] for s in sides} for size in cfg.sizes}
    connects: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(cfg.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        await asyncio.sleep(0.1)  # the relayed peer replaces the offers the last round took
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

    def side_by_side(t: dict[str, list[float]]) -> dict:
        return {"ws_ms": ms(t["ws"]), "wss_ms": ms(t["wss"]), "relayed_ms": ms(t["relayed"]),
                "ratio": _ratio(t["wss"], t["ws"]),
                "relayed_ratio": _ratio(t["relayed"], t["wss"])}

    return {"round_trip": {str(size): side_by_side(t) for size, t in trips.items()},
            "connect": side_by_side(connects)}


def run_transport_bench(cfg: TransportBenchConfig) -> dict:
    """Writes `transport.json` and `transport.png` to `cfg.out_dir`; returns the report."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    relay_pipe, relay_child = ctx.Pipe()
    relay = ctx.Process(target=_relay_process, args=(relay_child,), daemon=True)
    relay.start()
    parent, child = ctx.Pipe()
    peer = None
    try:
        if not relay_pipe.poll(60):
            raise RuntimeError("the relay did not start within 60 s")
        relay_port = relay_pipe.recv()
        peer = ctx.Process(target=_echo_peer, args=(child, relay_port), daemon=True)
        peer.start()
        if not parent.poll(60):
            raise RuntimeError("the echo peer did not start within 60 s")
        plain, tls, key = parent.recv()
        time.sleep(0.5)  # its offers reach the relay
        load = os.getloadavg()[0]
        summary = asyncio.run(_measure(cfg, (plain, tls, relay_port), key))
    finally:
        for pipe, proc in ((parent, peer), (relay_pipe, relay)):
            if proc is None:
                continue
            pipe.send("stop")
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
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
    for offset, side, label in ((-0.27, "ws_ms", "ws://"), (0.0, "wss_ms", "wss:// (pinned)"),
                                (0.27, "relayed_ms", "wss:// through the NAT relay")):
        ax.bar([i + offset for i in x], [r[side] for r in rows], 0.27, label=label)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("median ms")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
