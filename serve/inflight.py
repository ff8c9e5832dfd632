"""The forwards a node has passed on to its next hops lately, per link: what it tells the
sessions' gateways about when a next hop's link closes and that hop does not answer a new dial
(`serve.node.Node._link_closed`), so they fail over at once instead of waiting out their
traversal timeout.

Bounded everywhere: one entry per (gateway key, session) and link, the session's latest forward
(a session has one in flight at a time); at most `MAX_IN_FLIGHT` per link and one map per pooled
link. It knows nothing about the network or about reports.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

IN_FLIGHT_S = 10.0
"""A session's latest forward passed to the next hop this recently is reported to its gateway as
failed if that hop's connection closes (the hop's host may have died with the frame: without a
report the gateway would wait out its whole traversal timeout). A report about a request already
answered is ignored; a session has one forward in flight at a time, so one per session."""
MAX_IN_FLIGHT = 1024
"""Sessions remembered per next-hop link (the least recent forgotten first)."""


@dataclass(frozen=True)
class Forwarded:
    """What a report about a forward passed on needs (not its tensors)."""

    request_id: str
    order_digest: bytes
    ticket: object
    next_node: str
    at: float


class InFlight:
    def __init__(self, max_links: int) -> None:
        self.max_links = max_links
        self._by_link: OrderedDict[tuple[str, str],
                                   OrderedDict[tuple[str, str], Forwarded]] = OrderedDict()
        """Per next-hop link (url, key), per (gateway key, session): the latest forward."""

    def passed_on(self, link: tuple[str, str], sent: Forwarded) -> None:
        recent = self._by_link.setdefault(link, OrderedDict())
        self._by_link.move_to_end(link)
        key = (sent.ticket.gateway_key, sent.ticket.session)  # another gateway's id cannot
        recent[key] = sent  # overwrite this one's entry
        recent.move_to_end(key)
        while recent and (len(recent) > MAX_IN_FLIGHT or
                          sent.at - next(iter(recent.values())).at > IN_FLIGHT_S):
            recent.popitem(last=False)
        while len(self._by_link) > self.max_links:
            self._by_link.popitem(last=False)

    def lost(self, link: tuple[str, str]) -> list[Forwarded]:
        """Forget `link` (it closed); the forwards passed on it within `IN_FLIGHT_S`."""
        recent = self._by_link.pop(link, None) or {}
        now = time.monotonic()
        return [sent for sent in recent.values() if now - sent.at <= IN_FLIGHT_S]
