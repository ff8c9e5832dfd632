"""Signed records of the swarm: what a node says about itself, and verdicts about nodes.

A node record is signed by the node's own key; its id is derived from that key, so nobody can
announce an id without holding the key, and one key's record can never replace another's. A verdict
is signed by a gateway or maintainer key and carries its evidence. Readers (the tracker, every
gateway) verify each record themselves and fail closed: `RecordRejected` names the check.

The signed bytes are the canonical JSON of the record (sorted keys, no whitespace), so any reader in
any language can check them. Torch-free: the tracker imports this.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry.signing import SigningKey, canonical_json, verify_signature
from serve.exceptions import RecordRejected

NODE_ID_HEX = 32
"""A node id is the first 128 bits of the SHA-256 of its public key, in hex."""
MAX_SKEW_S = 30.0
"""A record issued further than this from the reader's clock is refused (replay, stale clocks)."""


def node_id_of(public_hex: str) -> str:
    """The node id that belongs to an Ed25519 public key (hex)."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:NODE_ID_HEX]


class NodeRecord(BaseModel):
    """The fields a node signs when it announces itself."""

    model_config = ConfigDict(extra="forbid")
    node_id: str = Field(min_length=NODE_ID_HEX, max_length=NODE_ID_HEX)
    public_key: str = Field(min_length=64, max_length=64)
    url: str = Field(min_length=1, max_length=512)
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    version: str = Field(max_length=128)
    versions: list[str] = Field(default_factory=list, max_length=16)
    channel: dict[str, Any] = Field(default_factory=dict)
    pid: int | None = None
    sessions: int = Field(0, ge=0)
    queue: int = Field(0, ge=0)
    ms_per_token_layer: float = Field(1.0, ge=0)
    stats: dict[str, Any] = Field(default_factory=dict)
    attestation: dict[str, Any] | None = None
    """Evidence of what the node runs, for the `attested` routing policy (serve/attestation.py)."""
    issued_at: float
    """Unix time the node signed this record."""


SIGNED_FIELDS = frozenset(NodeRecord.model_fields)


def sign_record(key: SigningKey, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` (a node's info) as a signed announcement: the record plus `signature`."""
    record = NodeRecord.model_validate({**fields, "issued_at": time.time()})
    body = record.model_dump(mode="json")
    return {**body, "signature": key.sign_bytes(canonical_json(body))}


def verify_record(entry: dict[str, Any], *, now: float | None = None,
                  max_age_s: float = MAX_SKEW_S) -> NodeRecord:
    """Check a signed node record (extra keys a tracker adds are ignored); raises `RecordRejected`.

    Checks: schema, id = hash of key, signature, issued no later than `MAX_SKEW_S` ahead of `now`
    and no more than `max_age_s` before it, a span that is a range."""
    now = time.time() if now is None else now
    try:
        body = {k: v for k, v in entry.items() if k in SIGNED_FIELDS}
        record = NodeRecord.model_validate(body)
        signature = entry.get("signature")
        if not isinstance(signature, str):
            raise RecordRejected("signature", "the record is not signed")
        if node_id_of(record.public_key) != record.node_id:
            raise RecordRejected("node-id", f"id {record.node_id} is not the hash of its key")
        if not verify_signature(record.public_key, signature, canonical_json(body)):
            raise RecordRejected("signature", f"bad signature on the record of {record.node_id}")
        if record.start >= record.end:
            raise RecordRejected("span", f"span {record.start}:{record.end} is empty")
        if record.issued_at > now + MAX_SKEW_S:
            raise RecordRejected("clock", f"record issued {record.issued_at - now:.0f} s ahead")
        if record.issued_at < now - max_age_s:
            raise RecordRejected("stale", f"record issued {now - record.issued_at:.0f} s ago")
        return record
    except RecordRejected:
        raise
    except (ValidationError, ValueError, TypeError, AttributeError) as exc:
        raise RecordRejected("schema", f"malformed record: {exc}") from None


class Verdict(BaseModel):
    """A signed claim about a node: its status, the check that failed, and the evidence."""

    model_config = ConfigDict(extra="forbid")
    node_id: str = Field(max_length=NODE_ID_HEX)
    status: str = Field(pattern="^evicted$")
    check: str = Field(max_length=64)
    detail: str = Field("", max_length=2000)
    evidence: dict[str, Any] = Field(default_factory=dict)
    """What the check saw (e.g. the failing receipt or proof item), for anyone to re-check."""
    by: str = Field(min_length=64, max_length=64)
    """Public key of the gateway or maintainer that signed the verdict."""
    issued_at: float


def sign_verdict(key: SigningKey, node_id: str, status: str, check: str, detail: str = "",
                 evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    verdict = Verdict(node_id=node_id, status=status, check=check, detail=detail[:2000],
                      evidence=evidence or {}, by=key.public_hex, issued_at=time.time())
    body = verdict.model_dump(mode="json")
    return {**body, "signature": key.sign_bytes(canonical_json(body))}


def verify_verdict(entry: dict[str, Any], trusted: set[str] | frozenset[str], *,
                   now: float | None = None) -> Verdict:
    """Check a signed verdict by one of the `trusted` public keys; raises `RecordRejected`.

    Verdicts do not expire (an eviction stands), but one dated in the future is refused."""
    now = time.time() if now is None else now
    try:
        body = {k: v for k, v in entry.items() if k != "signature"}
        verdict = Verdict.model_validate(body)
        if verdict.by not in trusted:
            raise RecordRejected("authority", "the verdict is not signed by a trusted key")
        if not verify_signature(verdict.by, str(entry.get("signature", "")), canonical_json(body)):
            raise RecordRejected("signature", "bad signature on the verdict")
        if verdict.issued_at > now + MAX_SKEW_S:
            raise RecordRejected("clock", "the verdict is dated in the future")
        return verdict
    except RecordRejected:
        raise
    except (ValidationError, ValueError, TypeError, AttributeError) as exc:
        raise RecordRejected("schema", f"malformed verdict: {exc}") from None
