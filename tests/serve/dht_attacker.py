"""A process without the swarm's invite, speaking the real DHT protocol (`kademlia` over UDP).

It knows a bootstrap peer's address and the DHT keys an eavesdropper sees on the wire (the
membership index and one node's key), but not the membership secret. It joins the routing layer,
fetches what the swarm's peers hold under those keys, tries to read it, stores its own signed
record there (unsealed, and sealed under a secret of its own), and replays a captured value.
It prints one JSON line: what it could read and how many peers accepted each store.

    python -m tests.serve.dht_attacker HOST:PORT INDEX_KEY_HEX NODE_KEY_HEX
"""

from __future__ import annotations

import asyncio
import json
import sys

from kademlia.network import Server
from kademlia.node import Node

from registry.signing import SigningKey
from serve.invite import SwarmKeys, new_invite
from serve.records import node_id_of, sign_record


async def main(bootstrap: str, index_hex: str, node_hex: str) -> dict:
    host, port = bootstrap.rsplit(":", 1)
    server = Server()  # the library's own peer: no invite, no checks of its own
    await server.listen(0, "127.0.0.1")
    server.protocol._wait_timeout = 1.0  # a dead peer's silence costs a second, not five
    await server.bootstrap([(host, int(port))])
    peers = server.bootstrappable_neighbors()
    index, node_key = bytes.fromhex(index_hex), bytes.fromhex(node_hex)
    protocol = server.protocol

    async def ask_all(rpc, *args) -> list:
        answers = await asyncio.gather(*(getattr(protocol, rpc)(addr, server.node.id, *args)
                                         for addr in peers))
        return [data for ok, data in answers if ok]

    held = [a["value"] for a in await ask_all("find_value", index) + await ask_all(
        "find_value", node_key) if isinstance(a, dict)]
    readable = 0
    for value in held:
        try:
            readable += "node_id" in json.loads(value)
        except (ValueError, TypeError, UnicodeDecodeError):
            pass
    guess = SwarmKeys(new_invite("local", []))  # a secret of its own: the same swarm name
    for value in held:
        try:
            guess.open(index, value)
            readable += 1
        except ValueError:
            pass
    key = SigningKey.generate("attacker")
    record = sign_record(key, {
        "node_id": node_id_of(key.public_hex), "url": "ws://127.0.0.1:9", "start": 0, "end": 4,
        "version": "x", "versions": ["x"], "channel": {}, "public_key": key.public_hex,
        "pid": None, "sessions": 0, "queue": 0, "ms_per_token_layer": 0.0, "stats": {},
        "attestation": None})
    plain = json.dumps(record).encode()
    attempts = [("unsealed-index", index, plain), ("unsealed-node", node_key, plain),
                ("own-secret-index", index, guess.seal(index, plain)),
                ("own-secret-node", node_key, guess.seal(node_key, plain))] + [
        (f"replay-{i}", node_key, v) for i, v in enumerate(held[:2])]
    answers = await asyncio.gather(*(ask_all("store", dkey, value) for _, dkey, value in attempts))
    stores = {name: sum(1 for a in got if a is True) for (name, _, _), got in zip(attempts, answers)}
    server.stop()
    return {"peers": len(peers), "held": len(held), "readable": readable, "stores": stores,
            "node_id": record["node_id"]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
