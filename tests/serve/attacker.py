"""An attacker that can reach a node's port, run as its own process by the attack tests:

    python -m tests.serve.attacker frames ws://NODE [REPLY_PORT]

It speaks the real protocol (it has read serve/wire.py) with a key of its own and sends every
hostile frame it can think of, one connection each: garbage, truncated frames, tickets signed by
someone else, empty routes, hops out of range, proof challenges for a billion chunks, activations
with NaN, positions past the context, oversized frames, closes and audits for other gateways'
sessions, and a forward that asks the node to dial REPLY_PORT. It prints one JSON object: for each
attack, what the node answered (an error code, "closed", or "nothing").
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import torch

from registry.signing import SigningKey
from serve import auth, wire
from serve.records import node_id_of


async def exchange(url: str, frames: list[bytes], wait_s: float = 2.0) -> str:
    """Send `frames` on a fresh connection; the first answer's error code (or what happened)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    ws = await connect(url, max_size=None, open_timeout=5)
    try:
        for frame in frames:
            await ws.send(frame)
        try:
            answer = await asyncio.wait_for(ws.recv(), wait_s)
        except TimeoutError:
            return "nothing"
        message, _ = wire.decode(answer)
        return getattr(message, "code", type(message).__name__)
    except ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else ''}".strip()
    finally:
        try:
            ws.transport.abort()
        except Exception:  # already closed by the node
            pass


async def node_identity(url: str) -> tuple[str, str, int, int]:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None) as ws:
        await ws.send(wire.encode(wire.Ping("p")))
        pong, _ = wire.decode(await ws.recv())
        r = pong.stats
        return r["node_id"], r["public_key"], r["start"], r["end"]


def forward(key: SigningKey, route: list[wire.Hop], hidden: torch.Tensor, *, hop: int = 0,
            keep: int = 0, reply_to: str = "ws://127.0.0.1:9", count: int | None = None,
            ticket_sig: bytes | None = None, order_tags: list[bytes] | None = None) -> bytes:
    ticket, sig = auth.make_ticket(key, os.urandom(8).hex(), route, reply_to, "", "float32")
    order, tags = auth.make_order(auth.gateway_keys(key, ticket, route), ticket,
                                  os.urandom(8).hex(), keep,
                                  hidden.shape[0] if count is None else count,
                                  wire.tensor_digest(hidden))
    msg = wire.Forward(ticket, ticket_sig or sig, order, tags if order_tags is None else order_tags,
                       hop, [], "float32")
    return wire.encode(msg, hidden)


async def attack(url: str, reply_port: int | None) -> dict[str, str]:
    me = SigningKey.generate("attacker")
    other = SigningKey.generate("someone")
    node_id, public_key, start, end = await node_identity(url)
    hop = wire.Hop(node_id, url, start, end, public_key)
    h = torch.randn(2, 64)
    nan = h.clone()
    nan[0, 0] = float("nan")
    results = {}
    cases = {
        "garbage": [os.urandom(64)],
        "truncated": [wire.encode(wire.Ping("x"))[:3]],
        "forged-ticket": [forward(me, [hop], h, ticket_sig=os.urandom(64))],
        "empty-route": [forward(me, [], h)],
        "hop-out-of-range": [forward(me, [hop], h, hop=5)],
        "negative-hop": [forward(me, [hop], h, hop=-1)],
        "nan-activations": [forward(me, [hop], nan)],
        "untagged-order": [forward(me, [hop], h, order_tags=[os.urandom(16)])],
        "no-order-tags": [forward(me, [hop], h, order_tags=[])],
        "past-the-context": [forward(me, [hop], h, keep=10**9)],
        "count-mismatch": [forward(me, [hop], h, count=10**6)],
        "huge-challenge": [wire.encode(auth.sign_challenge(me, "c", os.urandom(32), node_id,
                                                           10**9, ""))],
        "unsigned-challenge": [wire.encode(wire.Challenge("c", os.urandom(32), node_id, 4, "",
                                                          me.public_hex, os.urandom(64)))],
        "oversized-frame": [wire.encode(wire.Ping("big")) + b"\0" * (80 << 20)],
        "audit-of-others": [wire.encode(auth.sign_audit(me, "someone-elses-forward"))],
        "close-of-others": [wire.encode(auth.sign_close(other, "some-session"))],
    }
    if reply_port is not None:  # a well-formed forward that would make the node dial this port
        cases["dial-anywhere"] = [forward(me, [hop], h,
                                          reply_to=f"ws://127.0.0.1:{reply_port}")]
    for name, frames in cases.items():
        results[name] = await exchange(url, frames)
    # a route whose id is not the hash of its key, signed by the attacker
    liar = wire.Hop(node_id, url, start, end, me.public_hex)
    results["id-not-of-key"] = await exchange(url, [forward(me, [liar], h)])
    assert node_id_of(public_key) == node_id
    return results


def main() -> None:
    action, url = sys.argv[1], sys.argv[2]
    reply_port = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if action != "frames":
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(asyncio.run(attack(url, reply_port))))


if __name__ == "__main__":
    main()
