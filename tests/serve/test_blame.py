"""Who a hop's signed error may get excluded: itself, or its own next hop when that one does not
answer a ping. A hop naming any other node, or a next hop that is alive, gets itself avoided."""

from __future__ import annotations

import asyncio

from registry.signing import SigningKey
from serve import auth, wire
from serve.exceptions import HopFailed
from serve.records import node_id_of


def hops(n: int) -> tuple[list[SigningKey], list[wire.Hop]]:
    keys = [SigningKey.generate(f"n{i}") for i in range(n)]
    return keys, [wire.Hop(node_id_of(k.public_hex), f"ws://127.0.0.1:{9000 + i}", i, i + 1,
                           k.public_hex) for i, k in enumerate(keys)]


def test_a_hop_may_blame_itself_or_its_next_hop_only():
    keys, route = hops(3)
    ids = [h.node_id for h in route]
    first = keys[0]

    def error(code: str, named: str) -> wire.Error:
        return auth.sign_error(first, "r", code, "x", named, about=b"o")

    assert auth.blame(error("compute-failed", ids[0]), route) == (ids[0], None)
    assert auth.blame(error("next-hop-failed", ids[1]), route) == (ids[1], ids[0])
    # naming a node two hops on, or one off the route, or its successor under another code
    assert auth.blame(error("next-hop-failed", ids[2]), route) == (ids[0], None)
    assert auth.blame(error("next-hop-failed", "f" * 32), route) == (ids[0], None)
    assert auth.blame(error("compute-failed", ids[1]), route) == (ids[0], None)
    last = auth.sign_error(keys[2], "r", "next-hop-failed", "x", ids[0], about=b"o")
    assert auth.blame(last, route) == (ids[2], None)  # the last hop has no next hop


def test_the_gateway_pings_a_hop_reported_down_before_avoiding_it(tiny_swarm):
    """Against the real nodes of a swarm: a live next hop reported down gets the reporter
    avoided; a next hop that does not answer is the one avoided."""
    from serve.discovery import TrackerDiscovery
    from serve.gateway.pipeline import Pipeline

    async def main() -> tuple[str, str, str]:
        discovery = TrackerDiscovery(tiny_swarm.tracker_url)
        nodes = await discovery.nodes()
        pipeline = Pipeline(discovery, 4, None)
        await pipeline.start()
        try:
            route = [wire.Hop(n.node_id, n.url, n.start, n.end, n.public_key) for n in nodes]
            reporter, live = route[0], route[1]
            dead = wire.Hop("d" * 32, "ws://127.0.0.1:9", 0, 1, SigningKey.generate("d").public_hex)
            lie = await pipeline.culprit(HopFailed(live.node_id, "x", "next-hop-failed",
                                                   reporter.node_id), route)
            true = await pipeline.culprit(HopFailed(dead.node_id, "x", "next-hop-failed",
                                                    reporter.node_id), [reporter, dead])
            own = await pipeline.culprit(HopFailed(reporter.node_id, "x", "compute-failed"),
                                         route)
            return (lie == reporter.node_id, true == dead.node_id, own == reporter.node_id)
        finally:
            await pipeline.stop()
            await discovery.aclose()

    assert asyncio.run(main()) == (True, True, True)
