"""What the gateway accepts on its return port, frame by frame, with real keys: forged, relayed
and provoked frames count for nothing; a hop's own signature convicts it only of what it did."""

from __future__ import annotations

import asyncio

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


def setup(pipeline: Pipeline, x: torch.Tensor, request_id: str = "r"):
    ticket, _ = auth.make_ticket(pipeline.key, "s", ROUTE, "ws://g", "", "float32")
    order_data, _ = auth.make_order(pipeline.key, ticket, request_id, 0, x.shape[0],
                                    wire.tensor_digest(x))
    order = wire.unpack_order(order_data)
    future = asyncio.get_running_loop().create_future()
    pipeline._pending[request_id] = future
    pipeline._expect[request_id] = Expect(ROUTE, wire.digest(order_data), order, x.shape[1])
    return order, order_data, future


def chain(order, order_data, x, out) -> list[wire.Receipt]:
    digests = [wire.tensor_digest(x)] + [wire.tensor_digest(out)] * 3
    return [auth.make_receipt(k, ROUTE[i].node_id, order, order_data, i, digests[i],
                              digests[i + 1], "") for i, k in enumerate(KEYS)]


def run(coro):
    return asyncio.run(coro)


def test_a_genuine_result_is_accepted_and_forgeries_are_dropped():
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x, out = torch.randn(2, 8), torch.randn(2, 8)
        order, data, future = setup(p, x)
        receipts = chain(order, data, x, out)
        mallory = SigningKey.generate("mallory")
        p._on_return(auth.sign_result(mallory, "r", receipts, wire.digest(data), "float32"), out)
        assert not future.done() and p.refused == {"result-signature": 1}
        # the genuine result still arrives and is accepted
        p._on_return(auth.sign_result(KEYS[2], "r", receipts, wire.digest(data), "float32"), out)
        assert torch.equal(future.result(), out)
    run(main())


def test_a_result_for_another_order_convicts_nobody():
    """An attacker replays the request id in an order of its own to hop 1, whose honest final
    result would look like a shortcut: it is dropped, and hop 1 is not evicted."""
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x = torch.randn(2, 8)
        order, data, future = setup(p, x)
        mallory = SigningKey.generate("mallory")
        ticket, _ = auth.make_ticket(mallory, "s2", [ROUTE[1]], "ws://g", "", "float32")
        theirs, _ = auth.make_order(mallory, ticket, "r", 0, 2, wire.tensor_digest(x))
        receipt = auth.make_receipt(KEYS[1], ROUTE[1].node_id, wire.unpack_order(theirs),
                                    theirs, 0, wire.tensor_digest(x), wire.tensor_digest(x), "")
        p._on_return(auth.sign_result(KEYS[1], "r", [receipt], wire.digest(theirs), "float32"),
                     x)
        assert not future.done() and not p.evicted and p.refused == {"result-order": 1}
    run(main())


def test_a_hop_that_signs_a_final_result_mid_route_is_evicted():
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x, out = torch.randn(2, 8), torch.randn(2, 8)
        order, data, future = setup(p, x)
        first = chain(order, data, x, out)[:1]
        p._on_return(auth.sign_result(KEYS[0], "r", first, wire.digest(data), "float32"), out)
        with pytest.raises(HopFailed) as caught:
            future.result()
        assert caught.value.code == "shortcut" and p.evicted == {ROUTE[0].node_id}
    run(main())


def test_a_signed_but_malformed_output_convicts_the_last_hop():
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x = torch.randn(2, 8)
        order, data, future = setup(p, x)
        bad = torch.full((1, 7), float("nan"))
        p._on_return(auth.sign_result(KEYS[2], "r", chain(order, data, x, bad),
                                      wire.digest(data), "float32"), bad)
        with pytest.raises(HopFailed) as caught:
            future.result()
        assert caught.value.code == "malformed" and p.evicted == {ROUTE[2].node_id}
    run(main())


def test_errors_count_only_about_what_the_gateway_sent():
    """A node's signed error provoked by someone else's frame (same request id) is ignored."""
    async def main():
        p = Pipeline(StaticDiscovery([]), 3, None)
        x = torch.randn(2, 8)
        order, data, future = setup(p, x)
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
