"""Node housekeeping without the network: memory budget, idle eviction, request checks."""

from __future__ import annotations

import torch

from serve import wire
from serve.node import Node, NodeConfig
from serve.span import SessionCache


def make_node(tiny_model_dir, **kw) -> Node:
    return Node(NodeConfig(directory=tiny_model_dir, start=0, end=2, version_id="v", port=0, **kw))


def forward_msg(node: Node, session: str, keep: int, start: int = 0, end: int = 2):
    return wire.Forward("r1", session, [wire.Hop(node.node_id, "ws://x", start, end)], 0, keep,
                        "ws://gateway")


def test_memory_budget_evicts_least_recently_used(tiny_model_dir):
    node = make_node(tiny_model_dir, memory_budget_bytes=20_000)
    for sid in ("old", "new"):
        node.sessions[sid] = SessionCache()
        node.span.forward([(node.sessions[sid], torch.randn(30, 64))])
    assert sum(c.nbytes for c in node.sessions.values()) > 20_000
    node._enforce_budget()
    assert list(node.sessions) == ["new"] and node.stats.evictions == 1
    problem = node._check(forward_msg(node, "old", keep=30), wire.Hop(node.node_id, "", 0, 2),
                          torch.randn(1, 64))
    assert problem[0] == "session-evicted" and "re-prefill" in problem[1]


def test_requests_outside_the_span_or_for_another_node_are_refused(tiny_model_dir):
    node = make_node(tiny_model_dir)
    h = torch.randn(2, 64)
    assert node._check(forward_msg(node, "s", 0, 1, 4), wire.Hop(node.node_id, "", 1, 4),
                       h)[0] == "wrong-span"
    assert node._check(forward_msg(node, "s", 0), wire.Hop("someone-else", "", 0, 2),
                       h)[0] == "wrong-node"
    assert node._check(forward_msg(node, "s", 0), wire.Hop(node.node_id, "", 0, 2),
                       torch.randn(2, 65))[0] == "bad-tensor"
    assert node._check(forward_msg(node, "s", 0), wire.Hop(node.node_id, "", 0, 2), h) is None


def test_wire_roundtrip_and_compression():
    t = torch.randn(3, 64)
    msg = wire.Forward("r", "s", [wire.Hop("n", "ws://a", 0, 2)], 0, 5, "ws://g", "bfloat16")
    decoded, tensor = wire.decode(wire.encode(msg, t, "bfloat16"))
    assert decoded == msg and tensor.dtype == torch.float32
    assert torch.allclose(tensor, t.bfloat16().float())
    full = wire.encode(msg, t, "float32")
    assert len(wire.encode(msg, t, "bfloat16")) < 0.6 * len(full)
    import pytest

    with pytest.raises(wire.WireError):
        wire.decode(full[:-3])
