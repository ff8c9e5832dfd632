"""Choosing a route: the cheapest chain of nodes that covers every layer.

A node serving [s, e) can run any [p, e) with s <= p < e. Positions 0..L are graph vertices; a node
gives edges p -> e for each p in [s, e). The cost of an edge is the node's measured round-trip time
plus its compute estimate for the layers run, scaled up by its load. What a node says about itself
(speed, load) can only make it look worse than what the gateway measured: a node that claims to be
fast or idle to attract traffic gains nothing. Dijkstra over L+1 vertices
is instant for any realistic swarm. Pure function: no network, no state.
"""

from __future__ import annotations

import heapq

from serve.exceptions import NoRoute
from serve.discovery import NodeInfo
from serve.wire import Hop

LOAD_PENALTY = 0.25
"""Relative cost added per active session or queued item at a node."""


def hop_cost(node: NodeInfo, layers: int, rtt_ms: dict[str, float],
             measured_ms: dict[str, float] | None = None,
             own_load: dict[str, int] | None = None) -> float:
    """`measured_ms`: the gateway's own per-layer estimate of the node; `own_load`: sessions
    this gateway has open through it. Self-reports never beat them."""
    speed = max(node.ms_per_token_layer, (measured_ms or {}).get(node.node_id, 0.0))
    load = 1.0 + LOAD_PENALTY * max(node.sessions + node.queue,
                                    (own_load or {}).get(node.node_id, 0))
    return rtt_ms.get(node.node_id, 1.0) + speed * layers * load


def best_route(nodes: list[NodeInfo], num_layers: int, *, version: str | None = None,
               exclude: set[str] = frozenset(), rtt_ms: dict[str, float] | None = None,
               measured_ms: dict[str, float] | None = None,
               own_load: dict[str, int] | None = None) -> list[Hop]:
    """Lowest-cost hops covering layers [0, num_layers); `NoRoute` names the first gap."""
    rtt_ms = rtt_ms or {}
    usable = [n for n in nodes if n.node_id not in exclude and n.status == "ok"
              and (version is None or n.serves(version))]
    best: dict[int, float] = {0: 0.0}
    back: dict[int, tuple[int, NodeInfo]] = {}
    heap = [(0.0, 0)]
    while heap:
        cost, p = heapq.heappop(heap)
        if p == num_layers:
            break
        if cost > best.get(p, float("inf")):
            continue
        for node in usable:
            if node.start <= p < node.end:
                end = min(node.end, num_layers)
                c = cost + hop_cost(node, end - p, rtt_ms, measured_ms, own_load)
                if c < best.get(end, float("inf")):
                    best[end] = c
                    back[end] = (p, node)
                    heapq.heappush(heap, (c, end))
    if num_layers not in best:
        reached = max(best)
        nxt = min((n.start for n in usable if n.start > reached), default=num_layers)
        raise NoRoute(f"no live node serves layers {reached}:{nxt} of {num_layers}"
                      + (f" for version {version[:19]}…" if version else ""))
    hops, p = [], num_layers
    while p:
        q, node = back[p]
        hops.append(Hop(node.node_id, node.url, q, p, node.public_key))
        p = q
    return hops[::-1]
