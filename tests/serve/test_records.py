"""Signed node records and verdicts (`serve.records`, `serve.discovery.check_record`): every
tampering is refused, and the check names what failed."""

from __future__ import annotations

import time

import pytest

from registry.signing import SigningKey, canonical_json
from serve.discovery import check_record, check_verdict
from serve.exceptions import RecordRejected
from serve.records import MAX_SKEW_S, node_id_of, sign_record, sign_verdict, verify_record


def info(key: SigningKey, **over) -> dict:
    return {"node_id": node_id_of(key.public_hex), "public_key": key.public_hex,
            "url": "ws://127.0.0.1:9001", "start": 0, "end": 2, "version": "sha256:abc",
            "versions": ["sha256:abc"], "sessions": 0, "pid": 123, **over}


def resign(key: SigningKey, record: dict) -> dict:
    body = {k: v for k, v in record.items() if k != "signature"}
    return {**body, "signature": key.sign_bytes(canonical_json(body))}


def rejected(entry, **kw) -> str:
    with pytest.raises(RecordRejected) as err:
        check_record(entry, **kw)
    return err.value.check


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("node")


def test_a_signed_record_verifies(key):
    record = check_record(sign_record(key, info(key)))
    assert record.node_id == node_id_of(key.public_hex) and record.url == "ws://127.0.0.1:9001"
    assert len(record.node_id) == 32


@pytest.mark.parametrize("field,value", [("url", "ws://10.0.0.66:9001"), ("start", 1),
                                         ("end", 3), ("version", "sha256:evil"),
                                         ("sessions", 5), ("issued_at", 1.0)])
def test_a_tampered_field_breaks_the_signature(key, field, value):
    signed = sign_record(key, info(key))
    if field == "issued_at":
        value = signed["issued_at"] + 1
    assert rejected({**signed, field: value}) == "signature"


def test_an_id_that_is_not_the_hash_of_its_key(key):
    other = SigningKey.generate("other")
    # claims another node's id, signed correctly with its own key
    forged = resign(key, sign_record(key, info(key)) | {"node_id": node_id_of(other.public_hex)})
    assert rejected(forged) == "node-id"
    # claims another node's id and key, but cannot sign for that key
    borrowed = resign(key, sign_record(key, info(key)) | {
        "node_id": node_id_of(other.public_hex), "public_key": other.public_hex})
    assert rejected(borrowed) == "signature"


def test_unsigned_and_garbage_records(key):
    signed = sign_record(key, info(key))
    assert rejected({k: v for k, v in signed.items() if k != "signature"}) == "signature"
    assert rejected({**signed, "signature": "zz"}) == "signature"
    assert rejected({**signed, "signature": 5}) == "signature"
    for junk in (None, [], "x", {"node_id": "a"}, {**signed, "start": -1},
                 {**signed, "stats": {"x": float("nan")}}, {**signed, "public_key": "q" * 64}):
        assert rejected(junk) in ("schema", "signature")
    deep: object = []
    for _ in range(50_000):  # nesting deep enough to break a recursive encoder
        deep = [deep]
    assert rejected({**signed, "stats": {"d": deep}}) in ("schema", "signature")


def test_stale_and_future_records(key):
    now = time.time()
    signed = sign_record(key, info(key))
    assert rejected(signed, now=now + MAX_SKEW_S + 5) == "stale"
    assert rejected(signed, now=now + 20, max_age_s=10) == "stale"
    assert rejected(signed, now=now - MAX_SKEW_S - 5) == "clock"
    check_record(signed, now=now + 20)  # within the default window


def test_an_empty_span_and_coerced_types(key):
    assert rejected(resign(key, sign_record(key, info(key, start=2, end=2)))) == "span"
    signed = sign_record(key, info(key))
    # a string where a number belongs passes a lax schema; signed or not, it is refused
    assert rejected(resign(key, {**signed, "start": "0"})) == "schema"
    missing = resign(key, {k: v for k, v in signed.items() if k not in ("stats", "signature")})
    verify_record(missing)  # the bare record check accepts a record without optional fields…
    assert rejected(missing) == "schema"  # …the relay check wants exactly what was signed


def test_extra_fields_a_tracker_adds_are_not_signed(key):
    signed = sign_record(key, info(key))
    check_record({**signed, "status": "ok", "last_seen": 1.0, "verdicts": []})


def test_verdicts():
    gateway, stranger = SigningKey.generate("gw"), SigningKey.generate("x")
    nid = "ab" * 16
    v = sign_verdict(gateway, nid, "evicted", "merkle", "bad path", {"chunk": 3})
    assert check_verdict(v, {gateway.public_hex}).check == "merkle"

    def refused(entry, trusted=frozenset({gateway.public_hex}), **kw) -> str:
        with pytest.raises(RecordRejected) as err:
            check_verdict(entry, trusted, **kw)
        return err.value.check

    assert refused(v, {stranger.public_hex}) == "authority"
    assert refused(v, set()) == "authority"
    assert refused(sign_verdict(stranger, nid, "evicted", "merkle")) == "authority"
    assert refused({**v, "node_id": "cd" * 16}) == "signature"
    assert refused({**v, "evidence": {"chunk": 4}}) == "signature"
    assert refused({**v, "by": stranger.public_hex}) == "authority"
    assert refused({k: x for k, x in v.items() if k != "signature"}) == "signature"
    assert refused({"status": "evicted", "reason": "trust me"}) == "schema"
    assert refused(resign(gateway, {**v, "status": "ok"})) == "schema"
    assert refused(v, now=time.time() - MAX_SKEW_S - 5) == "clock"
    assert check_verdict(v, {gateway.public_hex}, now=time.time() + 10 ** 6)  # no expiry


def test_a_relay_that_rolls_a_record_back_neither_moves_nor_hides_the_node(key, tmp_path):
    """A hostile tracker (its own process) first lists a node's newest record, then an older
    one, genuinely signed, that points elsewhere: the reader keeps the newer record, so the node
    neither moves to the old address nor vanishes from routes."""
    import asyncio
    import json
    import subprocess
    import sys

    from serve.discovery import TrackerDiscovery

    older = sign_record(key, info(key, url="ws://127.0.0.1:9666"))
    time.sleep(0.01)
    newer = sign_record(key, info(key))
    (tmp_path / "newer.json").write_text(json.dumps([newer]))
    (tmp_path / "older.json").write_text(json.dumps([older]))
    tracker = subprocess.Popen([sys.executable, "-m", "tests.serve.rollback_tracker",
                                str(tmp_path / "newer.json"), str(tmp_path / "older.json")],
                               stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{tracker.stdout.readline().strip()}"

        async def views() -> list[list[str]]:
            reader, fresh = TrackerDiscovery(url), TrackerDiscovery(url)
            seen = [[n.url for n in await reader.nodes()] for _ in range(3)]
            seen.append([n.url for n in await fresh.nodes()])
            await reader.aclose()
            await fresh.aclose()
            return seen

        first, *rolled_back, unaware = asyncio.run(views())
    finally:
        tracker.kill()
        tracker.wait()
    assert first == ["ws://127.0.0.1:9001"]
    assert rolled_back == [["ws://127.0.0.1:9001"]] * 2  # the newer record, still fresh, kept
    assert unaware == ["ws://127.0.0.1:9666"]  # a reader that never saw the newer one cannot know
