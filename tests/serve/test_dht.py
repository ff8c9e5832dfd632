"""The DHT's storing peers and readers refuse what they must: real `kademlia` peers on loopback
UDP in one event loop, an insider (a member holding the invite) attacking the others."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from registry.signing import SigningKey
from serve.config import DhtConfig
from serve.dht import DhtPeer
from serve.dht_discovery import DhtDiscovery
from serve.exceptions import InviteError
from serve.invite import (Peer, SwarmKeys, decode_invite, join_invite, new_invite, open_invite,
                          parse_peer)
from serve.records import node_id_of, sign_record
from serve.up import free_port


def info(key: SigningKey, url: str = "ws://127.0.0.1:1") -> dict:
    return {"node_id": node_id_of(key.public_hex), "url": url, "start": 0, "end": 2,
            "version": "v1", "versions": ["v1"], "channel": {}, "public_key": key.public_hex,
            "pid": 1, "sessions": 0, "queue": 0, "ms_per_token_layer": 1.0, "stats": {},
            "attestation": None}


def sealed(keys: SwarmKeys, dkey: bytes, entry: dict) -> bytes:
    return keys.seal(dkey, json.dumps(entry).encode())


async def start_peers(n: int, invite=None) -> list[DhtPeer]:
    ports = [free_port() for _ in range(n)]
    invite = invite or new_invite("t", [Peer(host="127.0.0.1", port=ports[0])])
    peers = [DhtPeer(DhtConfig(invite=invite, port=p, host="127.0.0.1")) for p in ports]
    for p in peers:
        await p.start()
    for p in peers:
        await p.join()
    return peers


async def stored_on(peers: list[DhtPeer], announcer: DhtPeer, dkey: bytes, value: bytes) -> int:
    """Peers other than `announcer` that accept `value` under `dkey` (each asked directly)."""
    from kademlia.node import Node

    answers = await asyncio.gather(*(announcer.protocol.call_store(
        Node(p.server.node.id, "127.0.0.1", p.address.port), dkey, value)
        for p in peers if p is not announcer))
    return sum(1 for ok, data in answers if ok and data is True)


def test_invites_round_trip_and_refuse_garbage(tmp_path):
    invite = new_invite("lab", [parse_peer("127.0.0.1:7001")])
    again = decode_invite(invite.encode())
    assert again == invite and len(again.secret) == 64
    joined = join_invite([invite.encode(), "10.0.0.2:7002"])
    assert joined.secret == invite.secret and [str(p) for p in joined.peers] == [
        "127.0.0.1:7001", "10.0.0.2:7002"]
    assert join_invite(["127.0.0.1:7001"]).secret == open_invite([]).secret  # the open swarm
    kept = tmp_path / "invite.txt"
    kept.write_text(invite.encode() + "\n")
    assert join_invite([f"@{kept}"]).secret == invite.secret  # the secret stays out of argv
    with pytest.raises(InviteError, match="cannot read"):
        join_invite([f"@{tmp_path / 'missing'}"])
    for bad in (["shoal-invite1:!!!"], ["host-without-port"], ["example.com:80"],
                [invite.encode(), invite.encode()]):
        with pytest.raises(InviteError):
            join_invite(bad)
    keys, other = SwarmKeys(invite), SwarmKeys(new_invite("lab", []))
    assert keys.index != other.index  # the keys depend on the secret
    box = keys.seal(keys.index, b"x")
    assert keys.open(keys.index, box) == b"x"
    for wrong in (lambda: other.open(other.index, box), lambda: keys.open(keys.node_key("a"), box),
                  lambda: keys.open(keys.index, b"plain text, not sealed")):
        with pytest.raises(InviteError):
            wrong()


def test_storing_peers_refuse_forged_replayed_and_misplaced_records():
    async def run() -> None:
        peers = await start_peers(3)
        honest, insider = peers[1], peers[2]
        keys = honest.keys
        node, other = SigningKey.generate("n"), SigningKey.generate("o")
        node_id = node_id_of(node.public_hex)
        assert await honest.announce(sign_record(node, info(node))) == 3
        first = sign_record(node, info(node))
        await asyncio.sleep(0.01)
        newer = sign_record(node, info(node))
        assert await honest.announce(newer) == 3
        forged = {**newer, "url": "ws://evil:1", "issued_at": time.time()}
        claims_id = {**sign_record(other, info(other)), "node_id": node_id}
        other_rec = sign_record(other, info(other))
        attempts = {
            "forged signature": (keys.node_key(node_id), sealed(keys, keys.node_key(node_id),
                                                                forged)),
            "replayed older record": (keys.node_key(node_id),
                                      sealed(keys, keys.node_key(node_id), first)),
            "same record again": (keys.index, sealed(keys, keys.index, newer)),
            "another key's id": (keys.node_key(node_id), sealed(keys, keys.node_key(node_id),
                                                                claims_id)),
            "under another node's key": (keys.node_key(node_id),
                                         sealed(keys, keys.node_key(node_id), other_rec)),
            "unsealed": (keys.index, json.dumps(other_rec).encode()),
            "sealed for another key": (keys.index, sealed(keys, keys.node_key(node_id),
                                                          other_rec)),
            "stale": (keys.index, sealed(keys, keys.index, sign_record_at(other, -60))),
        }
        for what, (dkey, value) in attempts.items():
            assert await stored_on(peers, insider, dkey, value) == 0, what
        reader = DhtDiscovery(peers[0])
        await reader.refresh()
        listed = await reader.nodes()
        assert [(n.node_id, n.url, n.issued_at) for n in listed] == [
            (node_id, newer["url"], newer["issued_at"])]
        # an insider's own record only adds an index entry: it erases nobody
        assert await insider.announce(other_rec) == 3
        await reader.refresh()
        assert {n.node_id for n in await reader.nodes()} == {node_id, other_rec["node_id"]}
        for p in peers:
            p.stop()

    asyncio.run(run())


def sign_record_at(key: SigningKey, offset_s: float) -> dict:
    """A record signed as if `offset_s` from now (negative: in the past)."""
    from registry.signing import canonical_json
    from serve.records import NodeRecord

    body = NodeRecord.model_validate({**info(key), "issued_at": time.time() + offset_s}
                                     ).model_dump(mode="json")
    return {**body, "signature": key.sign_bytes(canonical_json(body))}


def test_a_reader_merges_every_storing_peer_and_drops_expired_records():
    async def run() -> None:
        peers = await start_peers(4)
        cfg = peers[0].config
        node = SigningKey.generate("n")
        await peers[1].announce(sign_record(node, info(node)))
        # one storing peer forgets the node (or lies by omission): the others still list it
        peers[2].storage.index.clear()
        peers[2].storage.records.clear()
        reader = DhtDiscovery(peers[0])
        await reader.refresh()
        assert [n.node_id for n in await reader.nodes()] == [node_id_of(node.public_hex)]
        # a node that stops announcing is gone once its record is older than the TTL
        short = DhtDiscovery(peers[3])
        short.ttl_s = 0.2
        await short.refresh()
        assert await short.nodes()
        await asyncio.sleep(0.3)
        assert await short.nodes() == []
        assert cfg.ttl_s >= 2 * cfg.announce_s  # a live node re-announces well before expiry
        for p in peers:
            p.stop()

    asyncio.run(run())


def test_a_dead_peer_costs_one_timeout_not_one_per_lookup():
    """The other peers still name a peer that died; a reader that saw it time out once does not
    wait on it again (an announcement after a death took longer than a record lives)."""
    async def run() -> None:
        peers = await start_peers(5)
        reader, dead = peers[0], peers[4]
        node = SigningKey.generate("n")
        record = sign_record(node, info(node))
        await peers[1].announce(record)
        dead_address = (dead.address.host, dead.address.port)
        dead.stop()
        t0 = time.monotonic()
        await reader.announce(record)  # this one meets the dead peer
        first = time.monotonic() - t0
        assert dead_address in reader.protocol.unanswered
        assert any(n.port == dead.address.port for p in peers[1:4]  # the others still name it
                   for n in p.protocol.router.find_neighbors(p.server.node, 20))
        t0 = time.monotonic()
        for _ in range(3):
            assert await reader.announce(sign_record(node, info(node))) == 4
            assert len(await reader.records()) >= 1
        later = (time.monotonic() - t0) / 3
        timeout = reader.config.rpc_timeout_s
        assert first >= timeout and later < timeout / 2, (first, later)
        # a peer heard from again is a contact again
        reader.protocol.datagram_received(b"", dead_address)
        assert dead_address not in reader.protocol.unanswered
        for p in peers[:4]:
            p.stop()

    asyncio.run(run())


def test_malformed_datagrams_cost_nothing():
    async def run() -> None:
        import socket

        import umsgpack

        peers = await start_peers(2)
        target = ("127.0.0.1", peers[0].address.port)
        junk = [b"", b"\x00" * 5, b"\x00" + b"m" * 20 + b"\xc1", b"\x07" + b"m" * 20 + b"x",
                b"\x00" + b"m" * 20 + umsgpack.packb(["store", [1, 2]]),
                b"\x00" + b"m" * 20 + umsgpack.packb(["find_node", [b"x" * 40, [1]]]),
                b"\x00" + b"m" * 20 + umsgpack.packb(["ping", [{"a": 1}]]),
                b"\x00" + b"m" * 20 + b"\xff" * 70000]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for datagram in junk:
                try:
                    s.sendto(datagram, target)
                except OSError:  # larger than a datagram holds
                    pass
        await asyncio.sleep(0.2)
        node = SigningKey.generate("n")
        assert await peers[1].announce(sign_record(node, info(node))) == 2  # still serving
        for p in peers:
            p.stop()

    asyncio.run(run())


def test_a_member_gone_bad_cannot_break_or_blind_a_reader():
    """A peer holding the invite answers every lookup with poison: contacts whose address would
    make `sendto` raise (asyncio then closes the socket for good), an index of invented ids,
    overflowing and far-future times, and junk under the node's own key. The reader keeps its
    socket, drops what does not check, and still finds the honest node's record."""
    async def run() -> None:
        peers = await start_peers(4)
        bad = peers[3]
        node = SigningKey.generate("n")
        honest_id = node_id_of(node.public_hex)
        await peers[1].announce(sign_record(node, info(node)))
        poison_contacts = [[bytes(20), "a\x00b", 4000], [b"\x01" * 20, "0.0.0.0", 4000],
                           [b"\x02" * 20, "224.0.0.1", 4000]]
        bad.protocol.rpc_find_node = lambda sender, nodeid, key: poison_contacts
        listing = {"members": [["x", 1], ["f" * 32, 10 ** 400], ["e" * 32, time.time() + 10 ** 6],
                               [honest_id], 5, "junk"]
                   + [[f"{i:032x}", time.time()] for i in range(5000)]}
        real_get = bad.storage.get

        def lying_get(key, default=None):
            if key == bad.keys.index:
                return bad.keys.seal(key, json.dumps(listing).encode())
            if real_get(key) is not None:
                return b"junk under the node's key"
            return default

        bad.storage.get = lying_get
        reader = peers[0]
        members = await reader.member_ids()
        assert set(members) == {honest_id}  # the ids only the liar lists are dropped
        assert "x" not in members and "f" * 32 not in members and "e" * 32 not in members
        records = await reader.records()
        assert honest_id in {r.get("node_id") for r in records}
        assert reader.server.transport is not None and not reader.server.transport.is_closing()
        other = SigningKey.generate("m")
        assert await reader.announce(sign_record(other, info(other))) >= 2  # still serving
        for p in peers:
            p.stop()

    asyncio.run(run())


def test_a_node_that_left_discovery_is_checked_again_before_traffic():
    from serve.discovery import NodeInfo
    from serve.gateway.verifier import Trust, Verifier, pin_of

    node = NodeInfo(**info(SigningKey.generate("n")), issued_at=time.time())
    verifier = Verifier(None, None, None, None)
    verifier.trust[node.node_id] = Trust(node.node_id, status="trusted", passed=5,
                                         pinned=pin_of(node), next_check=1e12)
    verifier.departed({node.node_id})
    assert verifier.admits(node)  # still listed: nothing changes
    verifier.departed(set())
    assert not verifier.admits(node) and verifier.trust[node.node_id].next_check == 0.0


def test_verdicts_are_claims_each_reader_weighs():
    from serve.records import sign_verdict

    async def run() -> None:
        peers = await start_peers(3)
        node, keys = SigningKey.generate("n"), peers[0].keys
        node_id = node_id_of(node.public_hex)
        await peers[2].announce(sign_record(node, info(node)))
        judge, stranger = SigningKey.generate("gateway-a"), SigningKey.generate("gateway-b")
        accuser = DhtDiscovery(peers[0], key=judge)
        await accuser.refresh()
        await accuser.report(node_id, "evicted", "merkle", "a bad Merkle path", {"item": 3})
        assert [n.status for n in await accuser.nodes()] == ["evicted"]  # at once, here
        trusting = DhtDiscovery(peers[1], trusted_verdict_keys=[judge.public_hex])
        doubting = DhtDiscovery(peers[2], key=stranger)
        for reader in (trusting, doubting):
            await reader.refresh()
            await reader.refresh_verdicts()
        (seen_by_trusting,) = await trusting.nodes()
        (seen_by_doubting,) = await doubting.nodes()
        assert seen_by_trusting.status == "evicted"
        assert seen_by_trusting.verdict["evidence"] == {"item": 3}
        assert seen_by_doubting.status == "ok" and len(seen_by_doubting.claims) == 1
        # storing peers keep only verdicts signed by the key they name, under their node's key
        good = sign_verdict(stranger, node_id, "evicted", "merkle")
        forged = {**good, "check": "fingerprint"}
        other = sign_verdict(stranger, "0" * 32, "evicted", "merkle")
        for what, entry, dkey in [("forged", forged, keys.verdict_key(node_id)),
                                  ("another node's key", other, keys.verdict_key(node_id)),
                                  ("replayed", accuser._verdicts[node_id][0],
                                   keys.verdict_key(node_id))]:
            assert await stored_on(peers, peers[2], dkey, sealed(keys, dkey, entry)) == 0, what
        for p in peers:
            p.stop()

    asyncio.run(run())


def test_a_record_dated_ahead_cannot_hold_a_slot_for_long():
    """Storing peers refuse records dated more than one lifetime ahead of their clock (a member
    dating throw-away keys' records 30 s ahead held index slots six lifetimes long)."""
    from unittest import mock

    from serve.dht import SwarmStorage

    keys = SwarmKeys(new_invite("t", [Peer(host="127.0.0.1", port=1)]))
    storage = SwarmStorage(keys, ttl_s=6.0, max_nodes=8)
    node = SigningKey.generate("n")
    with mock.patch("time.time", return_value=time.time() + 20):  # the signer's clock
        ahead = sign_record(node, info(node))
    assert not storage.accept(keys.index, sealed(keys, keys.index, ahead))
    assert storage.accept(keys.index, sealed(keys, keys.index, sign_record(node, info(node))))
