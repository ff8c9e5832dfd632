"""The tracker in-process (`serve.tracker`): it keeps only verified, newer records, bounds what a
peer can make it hold, accepts verdicts only from its configured keys, and what it relays is
verified again by `TrackerDiscovery`, which trusts only its own keys' verdicts."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from registry.signing import SigningKey, canonical_json
from serve.config import TrackerConfig
from serve.discovery import TrackerDiscovery
from serve.exceptions import RecordRejected, VerdictNotPosted
from serve.records import MAX_SKEW_S, NodeRecord, node_id_of, sign_record, sign_verdict
from serve.tracker import NodeTable, create_app


def info(key: SigningKey, port: int = 9001) -> dict:
    return {"node_id": node_id_of(key.public_hex), "public_key": key.public_hex,
            "url": f"ws://127.0.0.1:{port}", "start": 0, "end": 2, "version": "v1",
            "pid": 42, "sessions": 1}


@pytest.fixture
def gateway_key() -> SigningKey:
    return SigningKey.generate("gateway")


@pytest.fixture
def tracker(gateway_key):
    return TestClient(create_app(TrackerConfig(verdict_keys={gateway_key.public_hex},
                                               max_nodes=8, ttl_s=5)))


def test_announce_list_and_refusals(tracker):
    key, thief = SigningKey.generate("n"), SigningKey.generate("t")
    first = sign_record(key, info(key))
    assert tracker.post("/announce", json=first).json() == {"ok": True, "status": "ok"}
    [listed] = tracker.get("/nodes").json()
    assert {k: listed[k] for k in first} == first  # exactly as signed
    assert listed["status"] == "ok" and listed["verdict"] is None and listed["last_seen"] > 0

    def refused(entry, status: int, check: str) -> None:
        r = tracker.post("/announce", json=entry)
        assert (r.status_code, r.json()["error"]["check"]) == (status, check), r.text

    refused(first, 409, "replay")
    stolen = sign_record(thief, info(thief, 6666) | {"node_id": first["node_id"]})
    refused(stolen, 403, "node-id")
    refused({**first, "url": "ws://127.0.0.1:6666"}, 401, "signature")
    refused({**first, "signature": None}, 401, "signature")
    assert tracker.post("/announce", content=b"{nope").json()["error"]["check"] == "json"
    assert tracker.post("/announce", content=b'{"a": NaN}').status_code == 400
    assert tracker.post("/announce", content=b"[" * 15_000).json()["error"]["check"] == "json"
    assert tracker.post("/announce", content=b" " * 20_000).status_code == 413
    assert tracker.get("/nodes").json()[0]["url"] == first["url"]
    time.sleep(0.01)
    newer = sign_record(key, info(key, 9002))
    assert tracker.post("/announce", json=newer).status_code == 200
    assert tracker.get("/nodes").json()[0]["url"] == "ws://127.0.0.1:9002"
    refused(first, 409, "replay")  # an older capture cannot roll it back


def test_chunked_bodies_are_bounded(tracker):
    def chunks():
        for _ in range(40):
            yield b" " * 1024

    r = tracker.post("/announce", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["check"] == "size"


def test_verdicts_only_from_configured_keys(tracker, gateway_key):
    key = SigningKey.generate("n")
    record = sign_record(key, info(key))
    tracker.post("/announce", json=record)
    nid = record["node_id"]
    stranger = SigningKey.generate("x")
    for body, status in [({"status": "evicted", "reason": "x"}, 401), ({}, 401),
                         (sign_verdict(stranger, nid, "evicted", "merkle"), 403),
                         ({**sign_verdict(gateway_key, nid, "evicted", "merkle"),
                           "detail": "edited"}, 401),
                         (sign_verdict(gateway_key, "cd" * 16, "evicted", "merkle"), 403)]:
        r = tracker.post(f"/nodes/{nid}/status", json=body)
        assert r.status_code == status, (body, r.text)
    assert tracker.post(f"/nodes/{nid}/status", content=b"garbage").status_code == 401
    assert tracker.get("/nodes").json()[0]["status"] == "ok"
    good = sign_verdict(gateway_key, nid, "evicted", "merkle", "bad path", {"chunk": 1})
    assert tracker.post(f"/nodes/{nid}/status", json=good).status_code == 200
    [listed] = tracker.get("/nodes").json()
    assert listed["status"] == "evicted" and listed["verdict"] == good
    assert listed["verdicts"] == [good]
    time.sleep(0.01)
    assert tracker.post("/announce", json=sign_record(key, info(key))).json()["status"] == \
        "evicted"


def test_no_verdict_keys_no_verdicts(gateway_key):
    client = TestClient(create_app(TrackerConfig()))
    r = client.post("/nodes/" + "ab" * 16 + "/status",
                    json=sign_verdict(gateway_key, "ab" * 16, "evicted", "merkle"))
    assert r.status_code == 403 and r.json()["error"]["check"] == "no-verdict-keys"


def signed_at(key: SigningKey, fields: dict, issued_at: float) -> dict:
    body = NodeRecord.model_validate({**fields, "issued_at": issued_at}).model_dump(mode="json")
    return {**body, "signature": key.sign_bytes(canonical_json(body))}


def test_a_flood_of_fresh_keys_is_bounded():
    table = NodeTable(TrackerConfig(max_nodes=8, ttl_s=5))
    now = time.time()
    real = [SigningKey.generate(f"r{i}") for i in range(3)]
    for k in real:
        table.announce(signed_at(k, info(k), now), now)
    checks = []
    for i in range(50):
        k = SigningKey.generate(f"f{i}")
        try:
            table.announce(signed_at(k, info(k), now), now)
        except RecordRejected as exc:
            checks.append(exc.check)
    assert len(table.entries) == 8 and checks == ["full"] * 45
    for k in real:  # known ids still update while the table is full
        table.announce(signed_at(k, info(k), now + 2), now + 2)
    assert {node_id_of(k.public_hex) for k in real} <= {e["node_id"] for e in
                                                        table.listing(now + 2)}
    # the flood's records are no longer listed after ttl_s but still replayable: no room yet
    late = SigningKey.generate("late")
    with pytest.raises(RecordRejected, match="full"):
        table.announce(signed_at(late, info(late), now + 10), now + 10)
    # once they are neither listed nor replayable, they go (the live real nodes stay)
    after = now + MAX_SKEW_S + 1
    for k in real:
        table.announce(signed_at(k, info(k), after), after)
    table.announce(signed_at(late, info(late), after), after)
    assert set(table.entries) == {node_id_of(k.public_hex) for k in [*real, late]}


def test_discovery_verifies_what_the_tracker_relays(gateway_key):
    trusted_other = SigningKey.generate("maintainer")
    stranger = SigningKey.generate("x")
    app = create_app(TrackerConfig(verdict_keys={gateway_key.public_hex,
                                                 trusted_other.public_hex,
                                                 stranger.public_hex}))
    keys = [SigningKey.generate(f"n{i}") for i in range(4)]
    ids = [node_id_of(k.public_hex) for k in keys]

    async def run() -> None:
        disc = TrackerDiscovery("http://tracker", key=gateway_key,
                                trusted_verdict_keys={trusted_other.public_hex})
        disc._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                       base_url="http://tracker")
        http = disc._http
        for k in keys:
            await http.post("/announce", json=sign_record(k, info(k)))
        await disc.report(ids[0], "evicted", "proof failed [merkle]: bad path")  # old form
        await http.post(f"/nodes/{ids[1]}/status",
                        json=sign_verdict(trusted_other, ids[1], "evicted", "fingerprint"))
        await http.post(f"/nodes/{ids[2]}/status",
                        json=sign_verdict(stranger, ids[2], "evicted", "made-up"))
        nodes = {n.node_id: n for n in await disc.nodes()}
        assert nodes[ids[0]].status == "evicted" and nodes[ids[0]].verdict["check"] == "merkle"
        assert nodes[ids[1]].status == "evicted"
        assert nodes[ids[2]].status == "ok" and "made-up" in nodes[ids[2]].claims[0]
        assert nodes[ids[3]].status == "ok" and nodes[ids[3]].claims == []
        assert nodes[ids[3]].signature and nodes[ids[3]].issued_at > 0

        # a lying tracker: tampered, unsigned or moved records and verdicts are dropped
        table = app.state.table
        table.entries[ids[3]].body["url"] = "ws://10.6.6.6:1"
        table.verdicts[ids[2]] = {gateway_key.public_hex: (
            0.0, sign_verdict(gateway_key, ids[0], "evicted", "merkle"))}  # about another node
        nodes = {n.node_id: n for n in await disc.nodes()}
        assert ids[3] not in nodes
        assert nodes[ids[2]].status == "ok" and nodes[ids[2]].claims

        bare = TrackerDiscovery("http://tracker")
        with pytest.raises(VerdictNotPosted):
            await bare.report(ids[3], "evicted", "merkle")
        refusing = TrackerDiscovery("http://tracker", key=SigningKey.generate("unknown"))
        refusing._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url="http://tracker")
        with pytest.raises(VerdictNotPosted, match="403"):
            await refusing.report(ids[3], "evicted", "merkle", "detail", {"x": 1})

    asyncio.run(run())


def test_discovery_drops_stale_records_and_keeps_the_newest_over_a_rollback(gateway_key):
    key = SigningKey.generate("n")
    nid = node_id_of(key.public_hex)
    old = sign_record(key, info(key))
    old_copy = dict(old)
    time.sleep(0.01)
    new = sign_record(key, info(key, 9002))
    served: list = [[old, new]]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=served[0])

    async def run() -> None:
        disc = TrackerDiscovery("http://t", key=gateway_key, max_age_s=10)
        disc._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        [n] = await disc.nodes()  # the newest of duplicate ids wins
        assert n.url == "ws://127.0.0.1:9002"
        served[0] = [old_copy]  # the tracker rolls back to an older record: the newer stays
        assert [n.url for n in await disc.nodes()] == ["ws://127.0.0.1:9002"]
        served[0] = [{**new, "issued_at": new["issued_at"] - 60}]
        assert await disc.nodes() == []
        served[0] = {"not": "a list"}
        with pytest.raises(Exception):
            await disc.nodes()
        served[0] = [5, None, "x", {"node_id": nid}]
        assert await disc.nodes() == []

    asyncio.run(run())
