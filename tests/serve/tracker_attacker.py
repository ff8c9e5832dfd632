"""An outsider attacking a tracker over plain HTTP, run as its own process by the attack tests
(never part of serve/):

    python -m tests.serve.tracker_attacker ATTACK TRACKER_URL [ARG]

It holds no key of the swarm and imports nothing of shoal: only httpx and Ed25519 from
`cryptography`, with the record format read from the public docs (canonical JSON: sorted keys, no
whitespace; node id = first 32 hex digits of the SHA-256 of the public key). Each ATTACK prints one
JSON object, what the tracker answered, for the test to judge:

- `takeover`: for every listed node, announce its id with the attacker's key and address, with
  its key but the attacker's signature, replay its captured record, and send its record with
  fields the signature does not cover (address, issue time);
- `verdicts [GATEWAY_KEY_HEX]`: for every listed node, post an unsigned eviction, one signed by
  the attacker's key, and one that names the gateway's key but is signed by the attacker's;
- `flood N`: announce N fresh keys, each a well-formed record that claims every layer of the
  version the real nodes serve.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

EVIL_URL = "ws://127.0.0.1:1"
"""Where the attacker wants gateways to send traffic (nothing listens there)."""
SIGNED = ("node_id", "public_key", "url", "start", "end", "version", "versions", "channel", "pid",
          "sessions", "queue", "ms_per_token_layer", "stats", "attestation", "issued_at")


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Key:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        self.public = raw.hex()
        self.node_id = hashlib.sha256(raw).hexdigest()[:32]

    def sign(self, body: dict) -> dict:
        return {**body, "signature": self.private.sign(canonical(body)).hex()}


def answer(r: httpx.Response) -> dict:
    try:
        check = r.json().get("error", {}).get("check")
    except (ValueError, AttributeError):
        check = None
    return {"status": r.status_code, "check": check}


def takeover(http: httpx.Client, url: str) -> dict:
    me = Key()
    out: dict[str, dict] = {}
    for node in http.get(f"{url}/nodes").json():
        captured = {k: node[k] for k in SIGNED if k in node} | {"signature": node["signature"]}
        body = {k: v for k, v in captured.items() if k != "signature"}
        fresh = {**body, "url": EVIL_URL, "issued_at": time.time()}
        tries = {
            "own-key": me.sign({**fresh, "public_key": me.public}),  # its id, my key
            "its-key": me.sign(fresh),  # its id and key, my signature
            "replay": node,  # exactly what the tracker lists, signature included
            "other-url": {**captured, "url": EVIL_URL},
            "other-time": {**captured, "issued_at": time.time() + 1},
        }
        out[node["node_id"]] = {name: answer(http.post(f"{url}/announce", json=entry))
                                for name, entry in tries.items()}
    return out


def verdicts(http: httpx.Client, url: str, gateway_key: str | None) -> dict:
    me = Key()
    out: dict[str, dict] = {}
    for node in http.get(f"{url}/nodes").json():
        nid = node["node_id"]
        verdict = {"node_id": nid, "status": "evicted", "check": "merkle", "detail": "trust me",
                   "evidence": {}, "by": me.public, "issued_at": time.time()}
        tries = {"unsigned": {"status": "evicted", "reason": "proof failed [merkle]"},
                 "attacker-signed": me.sign(verdict)}
        if gateway_key:
            tries["forged-gateway"] = me.sign({**verdict, "by": gateway_key})
        out[nid] = {name: answer(http.post(f"{url}/nodes/{nid}/status", json=entry))
                    for name, entry in tries.items()}
    return out


def flood(http: httpx.Client, url: str, n: int) -> dict:
    listed = http.get(f"{url}/nodes").json()
    version = listed[0]["version"] if listed else ""  # claim what the real nodes serve
    counts: dict[str, int] = {}
    for _ in range(n):
        k = Key()
        record = {"node_id": k.node_id, "public_key": k.public, "url": EVIL_URL, "start": 0,
                  "end": 4, "version": version, "versions": [version], "channel": {}, "pid": None,
                  "sessions": 0, "queue": 0, "ms_per_token_layer": 0.0, "stats": {},
                  "attestation": None, "issued_at": time.time()}
        seen = answer(http.post(f"{url}/announce", json=k.sign(record)))
        label = str(seen["status"]) + (f":{seen['check']}" if seen["check"] else "")
        counts[label] = counts.get(label, 0) + 1
    return counts


def main() -> None:
    attack, url, *rest = sys.argv[1:]
    with httpx.Client(timeout=10) as http:
        if attack == "takeover":
            result = takeover(http, url)
        elif attack == "verdicts":
            result = verdicts(http, url, rest[0] if rest else None)
        elif attack == "flood":
            result = flood(http, url, int(rest[0]))
        else:
            raise SystemExit(f"unknown attack {attack!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
