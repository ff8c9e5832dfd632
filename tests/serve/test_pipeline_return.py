"""What the gateway accepts on its return port, frame by frame, with real keys: forged, relayed
and provoked frames count for nothing; a hop's own tag convicts it only of what it did."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import torch

from registry.signing import SigningKey
from serve import auth, wire
from serve.discovery import StaticDiscovery
from serve.exceptions import HopFailed
from serve.gateway.pipeline import Expect, Pipeline
from serve.records import node_id_of

KEYS = [SigningKey.generate(f"n{i}") for i in range(3)]
ROUTE = [wire.Hop(node_id_of(k.public_hex), f"ws://n{i}", i, i + 1, k.public_hex)
         for i, k in enumerate(KEYS)]


def keys_of(ticket: bytes, signature: bytes, route: list[wire.Hop] = ROUTE,
            keys: list[SigningKey] = KEYS) -> list[auth.HopKeys]:
    """The session keys each hop derives from the ticket (what honest hops hold)."""
    opened = auth.open_ticket(ticket, signature)
    return [auth.hop_keys(k, ticket, opened, i) for i, k in enumerate(keys)]


def setup(pipeline: Pipeline, x: torch.Tensor, request_id: str = "r"):
    ticket, signature = auth.make_ticket(pipeline.key, "s", ROUTE, "ws://g", "", "float32")
    gateway = auth.gateway_keys(pipeline.key, ticket, ROUTE)
    order_data, _ = auth.make_order(gateway, ticket, request_id, 0, x.shape[0],
                                    wire.tensor_digest(x))
    order = wire.unpack_order(order_data)
    future = asyncio.get_running_loop().create_future()
    pipeline._pending[request_id] = future
    pipeline._expect[request_id] = Expect(ROUTE, wire.digest(order_data), order, x.shape[1],
                                          gateway)
    return order, order_data, future, keys_of(ticket, signature)


def chain(order, order_data, x, out, hop_keys) -> list[wire.Receipt]:
    digests = [wire.tensor_digest(x)] + [wire.tensor_digest(out)] * 3
    return [auth.make_receipt(k, hop_keys[i], ROUTE[i].node_id, order, order_data, i,
                              digests[i], digests[i + 1], "") for i, k in enumerate(KEYS)]


def result(i: int, hop_keys, receipts, order_data) -> wire.Result:
    """The result hop `i` tags for the gateway."""
    return auth.make_result(KEYS[i], hop_keys[i].gateway, "r", receipts, wire.digest(order_data),
                            "float32")


def run(coro):
    return asyncio.run(coro)


def test_a_genuine_result_is_accepted_and_forgeries_are_dropped():
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x, out = torch.randn(2, 8), torch.randn(2, 8)
        order, data, future, hop_keys = setup(p, x)
        receipts = chain(order, data, x, out, hop_keys)
        mallory = SigningKey.generate("mallory")
        p._on_return(auth.make_result(mallory, b"k" * 32, "r", receipts, wire.digest(data),
                                      "float32"), out)
        # in the last hop's name, without its session key
        p._on_return(auth.make_result(KEYS[2], b"k" * 32, "r", receipts, wire.digest(data),
                                      "float32"), out)
        # a receipt of hop 1 whose gateway tag was replaced by its link tag
        swapped = [receipts[0], msgspec.structs.replace(receipts[1], mac=receipts[1].link),
                   receipts[2]]
        p._on_return(result(2, hop_keys, swapped, data), out)
        assert p.refused == {"result-tag": 2}
        with pytest.raises(HopFailed) as caught:
            future.result()
        assert caught.value.code == "receipt-tag" and ROUTE[1].node_id in str(caught.value)
        # the genuine result is accepted
        order, data, future, hop_keys = setup(p, x, "r")
        receipts = chain(order, data, x, out, hop_keys)
        p._on_return(result(2, hop_keys, receipts, data), out)
        assert torch.equal(future.result(), out)
    run(main())


def test_a_result_for_another_order_convicts_nobody():
    """An attacker replays the request id in an order of its own to hop 1, whose honest final
    result would look like a shortcut: it is dropped, and hop 1 is not evicted."""
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x = torch.randn(2, 8)
        order, data, future, _ = setup(p, x)
        mallory = SigningKey.generate("mallory")
        ticket, signature = auth.make_ticket(mallory, "s2", [ROUTE[1]], "ws://g", "", "float32")
        theirs, _ = auth.make_order(auth.gateway_keys(mallory, ticket, [ROUTE[1]]), ticket, "r",
                                    0, 2, wire.tensor_digest(x))
        [keys] = keys_of(ticket, signature, [ROUTE[1]], [KEYS[1]])
        receipt = auth.make_receipt(KEYS[1], keys, ROUTE[1].node_id, wire.unpack_order(theirs),
                                    theirs, 0, wire.tensor_digest(x), wire.tensor_digest(x), "")
        p._on_return(auth.make_result(KEYS[1], keys.gateway, "r", [receipt], wire.digest(theirs),
                                      "float32"), x)
        assert not future.done() and not p.evicted and p.refused == {"result-order": 1}
    run(main())


def test_a_hop_that_tags_a_final_result_mid_route_is_evicted():
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x, out = torch.randn(2, 8), torch.randn(2, 8)
        order, data, future, hop_keys = setup(p, x)
        first = chain(order, data, x, out, hop_keys)[:1]
        p._on_return(result(0, hop_keys, first, data), out)
        with pytest.raises(HopFailed) as caught:
            future.result()
        assert caught.value.code == "shortcut" and p.evicted == {ROUTE[0].node_id}
    run(main())


def test_a_tagged_but_malformed_output_convicts_the_last_hop():
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x = torch.randn(2, 8)
        order, data, future, hop_keys = setup(p, x)
        bad = torch.full((1, 7), float("nan"))
        p._on_return(result(2, hop_keys, chain(order, data, x, bad, hop_keys), data), bad)
        with pytest.raises(HopFailed) as caught:
            future.result()
        assert caught.value.code == "malformed" and p.evicted == {ROUTE[2].node_id}
    run(main())


def test_errors_count_only_about_what_the_gateway_sent():
    """A node's signed error provoked by someone else's frame (same request id) is ignored."""
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x = torch.randn(2, 8)
        order, data, future, _ = setup(p, x)
        provoked = auth.sign_error(KEYS[1], "r", "audit", "not kept", ROUTE[1].node_id,
                                   about=b"\0" * 32)
        p._on_return(provoked, None)
        unsigned = wire.Error("r", "failed", "x", ROUTE[1].node_id, wire.digest(data))
        p._on_return(unsigned, None)
        assert not future.done() and p.refused == {"error-unsigned": 2}
        real = auth.sign_error(KEYS[1], "r", "compute-failed", "oom", ROUTE[1].node_id,
                               about=wire.digest(data))
        p._on_return(real, None)
        with pytest.raises(HopFailed):
            future.result()
        assert not p.evicted  # an error is a failover, not evidence
    run(main())


def test_a_later_hop_cannot_spoil_an_earlier_receipts_signature_unseen():
    """The last hop relays hop 0's receipt with its signature replaced: the gateway's tag covers
    the signature, so the chain breaks at hop 0 (a failover), and no spoiled receipt is kept as
    evidence that hop 0's spot check would then fail on."""
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x, out = torch.randn(2, 8), torch.randn(2, 8)
        order, data, future, hop_keys = setup(p, x)
        receipts = chain(order, data, x, out, hop_keys)
        spoiled = [msgspec.structs.replace(receipts[0], signature=bytes(64)), *receipts[1:]]
        p._on_return(result(2, hop_keys, spoiled, data), out)
        with pytest.raises(HopFailed) as caught:
            future.result()
        assert caught.value.code == "receipt-tag" and not p.evicted and "r" not in p.receipts
        # the link tag is for the next hop only: a copy with another one is the same receipt
        relinked = msgspec.structs.replace(receipts[0], link=bytes(16))
        assert auth.same_receipt(relinked, receipts[0])
        assert not auth.same_receipt(spoiled[0], receipts[0])
    run(main())
