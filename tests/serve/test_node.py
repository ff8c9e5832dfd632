"""A node without the network: what it admits (the swarm protocol), memory budget, idle eviction, wire
format. Frames are built the way a gateway or an attacker would build them, with real keys."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
import torch

from registry.signing import SigningKey
from serve import auth, wire
from serve.exceptions import FrameRejected
from serve.node import Node, NodeConfig
from serve.records import node_id_of
from serve.span import SessionCache

GATEWAY = SigningKey.generate("gateway")


def make_node(tiny_model_dir, **kw) -> Node:
    return Node(NodeConfig(directory=tiny_model_dir, start=0, end=2, version_id="v", port=0, **kw))


def hop_of(node: Node, start: int = 0, end: int = 2) -> wire.Hop:
    return wire.Hop(node.node_id, "ws://x", start, end, node.key.public_hex)


@dataclasses.dataclass
class Frame:
    ticket: bytes
    ticket_sig: bytes
    order: bytes
    order_tags: list
    hidden: torch.Tensor
    hop: int = 0
    receipts: tuple = ()

    def forward(self, **changes) -> wire.Forward:
        fields = dict(ticket=self.ticket, ticket_sig=self.ticket_sig, order=self.order,
                      order_tags=self.order_tags, hop=self.hop, receipts=list(self.receipts))
        return wire.Forward(**{**fields, **changes})


def frame(route: list[wire.Hop], hidden: torch.Tensor, *, key: SigningKey = GATEWAY,
          session: str = "s", keep: int = 0, request_id: str = "r1",
          wire_dtype: str = "float32") -> Frame:
    ticket, ticket_sig = auth.make_ticket(key, session, route, "ws://gateway", "", wire_dtype)
    order, order_tags = auth.make_order(auth.gateway_keys(key, ticket, route), ticket,
                                        request_id, keep, hidden.shape[0],
                                        wire.tensor_digest(hidden, wire_dtype))
    return Frame(ticket, ticket_sig, order, order_tags, hidden)


def keys_of(key: SigningKey, f: Frame, hop: int) -> auth.HopKeys:
    """The session keys a hop of `f`'s route derives (what an honest predecessor holds)."""
    return auth.hop_keys(key, f.ticket, auth.open_ticket(f.ticket, f.ticket_sig), hop)


def refused(node: Node, fwd: wire.Forward, tensor: torch.Tensor) -> str:
    with pytest.raises(FrameRejected) as caught:
        node.admission.forward(fwd, tensor)
    return caught.value.check


def test_an_honest_frame_is_admitted_once(tiny_model_dir):
    node = make_node(tiny_model_dir)
    f = frame([hop_of(node)], torch.randn(3, 64))
    job = node.admission.forward(f.forward(), f.hidden)
    assert (job.session, job.order.count, job.hop.node_id) == ("s", 3, node.node_id)
    assert refused(node, f.forward(), f.hidden) == "replay"


def test_forged_or_mismatched_frames_are_refused(tiny_model_dir):
    node = make_node(tiny_model_dir)
    h = torch.randn(2, 64)
    mallory = SigningKey.generate("mallory")
    f = frame([hop_of(node)], h, request_id="a")
    # a ticket signed by someone other than the key it names
    forged_sig = auth.sign(mallory, wire.ticket_bytes(f.ticket))
    assert refused(node, f.forward(ticket_sig=forged_sig), h) == "ticket-signature"
    # an order whose `keep` was changed on the way
    order = wire.unpack_order(f.order)
    tampered = wire.pack(msgspec.structs.replace(order, keep=5))
    assert refused(node, f.forward(order=tampered), h) == "order-tag"
    # a tensor other than the one ordered
    assert refused(node, f.forward(), h + 1) == "input-digest"
    # NaN activations, the wrong width, more positions than ordered
    bad = h.clone()
    bad[0, 0] = float("nan")
    nan_frame = frame([hop_of(node)], bad, request_id="b")
    assert refused(node, nan_frame.forward(), bad) == "bad-tensor"
    wide = torch.randn(2, 65)
    assert refused(node, frame([hop_of(node)], wide, request_id="c").forward(), wide) == \
        "bad-tensor"
    # a route naming another node, other layers, or an out-of-range hop
    other = SigningKey.generate("other")
    stranger = wire.Hop(node_id_of(other.public_hex), "ws://y", 0, 2, other.public_hex)
    assert refused(node, frame([stranger], h, request_id="d").forward(), h) == "wrong-node"
    assert refused(node, frame([hop_of(node, 1, 4)], h, request_id="e").forward(), h) == \
        "wrong-span"
    assert refused(node, frame([hop_of(node)], h, request_id="f").forward(hop=3), h) == "route"
    # a hop whose id is not the hash of its key
    liar = wire.Hop(node.node_id, "ws://x", 0, 2, other.public_hex)
    assert refused(node, frame([liar], h, request_id="g").forward(), h) == "route"


def test_a_later_hop_needs_the_previous_hops_receipt(tiny_model_dir):
    node = Node(NodeConfig(directory=tiny_model_dir, start=2, end=4, version_id="v", port=0))
    first = SigningKey.generate("first")
    first_hop = wire.Hop(node_id_of(first.public_hex), "ws://a", 0, 2, first.public_hex)
    route = [first_hop, hop_of(node, 2, 4)]
    x, y = torch.randn(2, 64), torch.randn(2, 64)
    f = frame(route, x)
    order = wire.unpack_order(f.order)
    receipt = auth.make_receipt(first, keys_of(first, f, 0), first_hop.node_id, order, f.order,
                                0, wire.tensor_digest(x), wire.tensor_digest(y), "v")
    assert refused(node, f.forward(hop=1), y) == "receipt"  # no receipt at all
    mallory = SigningKey.generate("mallory")  # not hop 0: it cannot know the link key
    forged = auth.make_receipt(mallory, keys_of(mallory, f, 0), first_hop.node_id, order,
                               f.order, 0, wire.tensor_digest(x), wire.tensor_digest(y), "v")
    assert refused(node, f.forward(hop=1, receipts=[forged]), y) == "receipt-tag"
    # hop 0's own receipt with the tag it made for the gateway in place of the link tag
    swapped = msgspec.structs.replace(receipt, link=receipt.mac)
    assert refused(node, f.forward(hop=1, receipts=[swapped]), y) == "receipt-tag"
    assert refused(node, f.forward(hop=1, receipts=[receipt]), y + 1) == "input-digest"
    job = node.admission.forward(f.forward(hop=1, receipts=[receipt]), y)
    assert job.hop.start == 2


def test_a_node_can_work_for_listed_gateways_only(tiny_model_dir):
    node = make_node(tiny_model_dir, gateway_keys={GATEWAY.public_hex})
    h = torch.randn(1, 64)
    assert node.admission.forward(frame([hop_of(node)], h).forward(), h)
    stranger = SigningKey.generate("stranger")
    f = frame([hop_of(node)], h, key=stranger, request_id="x")
    assert refused(node, f.forward(), h) == "gateway-key"


def test_memory_budget_evicts_least_recently_used(tiny_model_dir):
    node = make_node(tiny_model_dir, memory_budget_bytes=20_000)
    for sid in ("old", "new"):
        node.sessions[sid] = SessionCache()
        node.span.forward([(node.sessions[sid], torch.randn(30, 64))])
    assert sum(c.nbytes for c in node.sessions.values()) > 20_000
    node._enforce_budget()
    assert list(node.sessions) == ["new"] and node.stats.evictions == 1
    h = torch.randn(1, 64)
    job = node.admission.forward(frame([hop_of(node)], h, session="old", keep=30).forward(), h)
    problem = node._check(job)
    assert problem[0] == "session-evicted" and "re-prefill" in problem[1]


def test_wire_roundtrip_and_compression():
    t = torch.randn(3, 64)
    msg = wire.Result("r", [], wire_dtype="bfloat16")
    decoded, tensor = wire.decode(wire.encode(msg, t, "bfloat16"))
    assert decoded == msg and tensor.dtype == torch.float32
    assert torch.allclose(tensor, t.bfloat16().float())
    assert wire.tensor_digest(tensor, "bfloat16") == wire.tensor_digest(t, "bfloat16")
    full = wire.encode(wire.Result("r", []), t, "float32")
    assert len(wire.encode(msg, t, "bfloat16")) < 0.6 * len(full)
    with pytest.raises(wire.WireError):
        wire.decode(full[:-3])
    with pytest.raises(wire.WireError):  # a tensor claiming 200 dimensions
        wire.decode(full[:4 + int.from_bytes(full[:4], "little")] + bytes([200]) + b"\0" * 8)


def test_a_later_hop_refuses_an_order_its_predecessor_wrote(tiny_model_dir):
    """Hop 0 must not make hop 1 truncate or overwrite its cache with an order of its own."""
    node = Node(NodeConfig(directory=tiny_model_dir, start=2, end=4, version_id="v", port=0))
    first = SigningKey.generate("first")
    first_hop = wire.Hop(node_id_of(first.public_hex), "ws://a", 0, 2, first.public_hex)
    x, y = torch.randn(1, 64), torch.randn(1, 64)
    f = frame([first_hop, hop_of(node, 2, 4)], x)
    order = wire.unpack_order(f.order)
    mine = wire.pack(msgspec.structs.replace(order, keep=4))
    receipt = auth.make_receipt(first, keys_of(first, f, 0), first_hop.node_id,
                                wire.unpack_order(mine), mine, 0, wire.tensor_digest(x),
                                wire.tensor_digest(y), "v")
    assert refused(node, f.forward(hop=1, order=mine, receipts=[receipt]), y) == \
        "order-tag"


def test_a_node_never_signs_an_output_the_wire_cannot_carry(tiny_model_dir):
    """Finite but huge activations from upstream overflow float16: the node reports it (a
    failover) instead of signing an output the gateway would reject as this hop's fault."""
    import asyncio

    node = make_node(tiny_model_dir)
    h = torch.randn(1, 64)
    f = frame([hop_of(node)], h, wire_dtype="float16")
    job = node.admission.forward(f.forward(wire_dtype="float16"), h)
    sent = []

    async def capture(url, data, peer_key):
        sent.append((url, data))

    node._send = capture
    asyncio.run(node._pass_on(job, torch.full((1, 64), 1e6), "v"))
    [(url, data)] = sent
    message, tensor = wire.decode(data)
    assert url == "ws://gateway" and tensor is None
    assert isinstance(message, wire.Error) and message.code == "non-finite-output"
