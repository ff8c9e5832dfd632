"""What a node checks before it computes anything for a frame (docs/threat-model.md, Hops).

`Admission.forward` turns a `Forward` frame into a `Job` or raises `FrameRejected`: the ticket is
signed by its gateway (and that gateway is allowed here), this node is the hop the frame is for
and serves its layers, the order is tagged for this hop by the gateway, fresh and seen for the
first time, the tensor is a finite [count, hidden] matrix within the context, and the input is
exactly what the gateway (first hop) or the previous hop (its receipt, tagged with our link key)
sent. Verified tickets are cached by signature with the session keys derived from them, so a
session's route costs one signature check and a few key exchanges per node, not one per step.

It knows nothing about caches, batching or sockets; all bounds are explicit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from registry.signing import SigningKey
from serve import auth, wire
from serve.exceptions import FrameRejected

TICKET_CACHE = 4096
"""Verified tickets remembered (one per live session route)."""
SEEN_ORDERS = 65536
"""Request ids remembered against replay (older ones are past the order window anyway)."""


@dataclass
class Job:
    """One admitted forward, waiting for compute."""

    forward: wire.Forward
    ticket: wire.Ticket
    order: wire.Order
    order_digest: bytes
    hop: wire.Hop
    hidden: torch.Tensor
    input_digest: bytes
    keys: auth.HopKeys

    @property
    def session(self) -> str:
        return self.ticket.session

    @property
    def request_id(self) -> str:
        return self.order.request_id


class Admission:
    def __init__(self, node_id: str, key: SigningKey, start: int, end: int, hidden_size: int,
                 context_length: int, gateway_keys: set[str] | frozenset[str] = frozenset()
                 ) -> None:
        self.node_id, self.key, self.public_key = node_id, key, key.public_hex
        self.start, self.end = start, end
        self.hidden_size, self.context_length = hidden_size, context_length
        self.gateway_keys = frozenset(gateway_keys)
        """Gateways this node works for (empty: any gateway that signs its frames)."""
        self._tickets: OrderedDict[tuple[bytes, int], tuple[bytes, wire.Ticket, auth.HopKeys]] = (
            OrderedDict())
        self._seen: OrderedDict[str, float] = OrderedDict()

    def ticket(self, data: bytes, signature: bytes, hop: int) -> tuple[wire.Ticket, auth.HopKeys]:
        """A verified ticket and this node's session keys as its hop `hop` (cached)."""
        cached = self._tickets.get((signature, hop))
        if cached is not None and cached[0] == data:
            self._tickets.move_to_end((signature, hop))
            return cached[1], cached[2]
        ticket = auth.open_ticket(data, signature)
        self.check_gateway(ticket.gateway_key)
        self._check_hop(ticket.route, hop)
        keys = auth.hop_keys(self.key, data, ticket, hop)
        self._tickets[(signature, hop)] = (data, ticket, keys)
        while len(self._tickets) > TICKET_CACHE:
            self._tickets.popitem(last=False)
        return ticket, keys

    def _check_hop(self, route: list[wire.Hop], index: int) -> None:
        if not 0 <= index < len(route):
            raise FrameRejected("route", f"hop {index} of a {len(route)}-hop route")
        hop = route[index]
        if hop.node_id != self.node_id or hop.public_key != self.public_key:
            raise FrameRejected("wrong-node", f"hop {index} names node {hop.node_id}, this is "
                                f"{self.node_id}")
        if not self.start <= hop.start < hop.end <= self.end:
            raise FrameRejected("wrong-span", f"layers {hop.start}:{hop.end} requested, this node "
                                f"serves {self.start}:{self.end}")

    def check_gateway(self, key: str) -> None:
        if self.gateway_keys and key not in self.gateway_keys:
            raise FrameRejected("gateway-key", "this node does not work for that gateway")

    def forward(self, fwd: wire.Forward, tensor: torch.Tensor | None) -> Job:
        ticket, keys = self.ticket(fwd.ticket, fwd.ticket_sig, fwd.hop)
        route = ticket.route
        hop = route[fwd.hop]
        if fwd.wire_dtype != ticket.wire_dtype:
            raise FrameRejected("wire-dtype", f"frame in {fwd.wire_dtype}, ticket says "
                                f"{ticket.wire_dtype}")
        if len(fwd.order_tags) != len(route):
            raise FrameRejected("order-tag", f"{len(fwd.order_tags)} order tags for "
                                f"{len(route)} hops")
        order = auth.open_order(fwd.order, fwd.order_tags[fwd.hop], keys.gateway, fwd.ticket)
        order_digest = wire.digest(fwd.order)
        self._check_tensor(tensor, order)
        input_digest = wire.tensor_digest(tensor, ticket.wire_dtype)
        if fwd.hop == 0:
            if input_digest != order.input_digest:
                raise FrameRejected("input-digest", "the input is not what the gateway ordered")
        else:
            if len(fwd.receipts) != fwd.hop:
                raise FrameRejected("receipt", f"{len(fwd.receipts)} receipts before hop "
                                    f"{fwd.hop}")
            previous = fwd.receipts[-1]
            auth.check_link(previous, route[fwd.hop - 1], fwd.hop - 1, order, order_digest,
                            keys.previous)
            if previous.output_digest != input_digest:
                raise FrameRejected("input-digest", "the input is not what the previous hop "
                                    "signed")
        self._first_time(order)
        return Job(fwd, ticket, order, order_digest, hop, tensor, input_digest, keys)

    def _check_tensor(self, tensor: torch.Tensor | None, order: wire.Order) -> None:
        if tensor is None or tensor.dim() != 2 or tensor.shape[1] != self.hidden_size:
            shape = None if tensor is None else list(tensor.shape)
            raise FrameRejected("bad-tensor", f"expected hidden states [T, {self.hidden_size}], "
                                f"got {shape}")
        if tensor.shape[0] != order.count:
            raise FrameRejected("bad-tensor", f"{tensor.shape[0]} positions, the order says "
                                f"{order.count}")
        if order.keep + order.count > self.context_length:
            raise FrameRejected("context", f"positions {order.keep}+{order.count} exceed the "
                                f"context of {self.context_length}")
        if not bool(torch.isfinite(tensor).all()):
            raise FrameRejected("bad-tensor", "the hidden states hold NaN or infinite values")

    def _first_time(self, order: wire.Order) -> None:
        """Refuse an order seen before (a replayed frame), remembering recent ones."""
        if order.request_id in self._seen:
            raise FrameRejected("replay", f"order {order.request_id} was already run")
        now = time.time()
        self._seen[order.request_id] = now
        while self._seen and (len(self._seen) > SEEN_ORDERS or
                              next(iter(self._seen.values())) < now - 2 * auth.ORDER_WINDOW_S):
            self._seen.popitem(last=False)
