"""Channels, the snapshot, and the checks a client makes before it believes either.

A channel record says "channel C points at version V", with a sequence number that only grows, an
expiry, and the digest of the record before it (so the history is a hash chain that cannot be
rewritten without breaking it). The snapshot is one signed record naming the current sequence of
every channel. A client refuses:

- a record with a lower sequence than it has seen (``channel-rollback``),
- an expired record or snapshot (``channel-expired`` / ``snapshot-expired``: a freeze attack),
- a record that is not the one the current snapshot names, or that belongs to another registry
  (``mix-and-match``),
- a snapshot older than one it has seen (``snapshot-rollback``).

A legitimate rollback is a new, higher record pointing at older weights.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.exceptions import VerificationError
from registry.policy import parse_time, utcnow
from registry.signing import Envelope, canonical_json, sha256_hex

CHANNEL_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class ChannelRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["channel"] = "channel"
    registry: str
    channel: str = Field(pattern=CHANNEL_NAME)
    version: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    sequence: int = Field(ge=1)
    expires: str
    prev: str | None = Field(description="sha256 of the previous record's signed payload")
    promoted_at: str
    note: str = ""


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["snapshot"] = "snapshot"
    registry: str
    version: int = Field(ge=1)
    expires: str
    channels: dict[str, int]


def record_digest(envelope: Envelope) -> str:
    return sha256_hex(canonical_json(envelope.signed))


def parse_record(envelope: Envelope) -> ChannelRecord:
    try:
        return ChannelRecord.model_validate(envelope.signed)
    except ValueError as exc:
        raise VerificationError("channel-schema", f"malformed channel record: {exc}") from None


def parse_snapshot(envelope: Envelope) -> Snapshot:
    try:
        return Snapshot.model_validate(envelope.signed)
    except ValueError as exc:
        raise VerificationError("snapshot-schema", f"malformed snapshot: {exc}") from None


def check_snapshot(snap: Snapshot, *, registry: str, seen_version: int,
                   now: datetime | None = None) -> None:
    if snap.registry != registry:
        raise VerificationError("mix-and-match", f"snapshot belongs to registry {snap.registry!r}, "
                                f"not {registry!r}")
    if snap.version < seen_version:
        raise VerificationError("snapshot-rollback", f"snapshot v{snap.version} is older than "
                                f"v{seen_version} already seen")
    if parse_time(snap.expires) <= (now or utcnow()):
        raise VerificationError("snapshot-expired", f"snapshot v{snap.version} expired at "
                                f"{snap.expires}")


def check_record(record: ChannelRecord, *, channel: str, registry: str, snapshot: Snapshot,
                 seen_sequence: int, now: datetime | None = None) -> None:
    """The client-side checks on a channel head, after its signatures were verified."""
    if record.channel != channel:
        raise VerificationError("mix-and-match", f"asked for channel {channel!r}, got a record "
                                f"for {record.channel!r}")
    if record.registry != registry:
        raise VerificationError("mix-and-match", f"channel record belongs to registry "
                                f"{record.registry!r}, not {registry!r}")
    if record.sequence < seen_sequence:
        raise VerificationError("channel-rollback", f"{channel}: sequence {record.sequence} is "
                                f"lower than {seen_sequence} already seen")
    if parse_time(record.expires) <= (now or utcnow()):
        raise VerificationError("channel-expired", f"{channel}: record {record.sequence} expired "
                                f"at {record.expires}")
    expected = snapshot.channels.get(channel)
    if expected != record.sequence:
        raise VerificationError("mix-and-match", f"{channel}: record {record.sequence} is not the "
                                f"one snapshot v{snapshot.version} names ({expected})")
