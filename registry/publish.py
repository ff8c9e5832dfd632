"""Maintainer-side writes: create a registry, import and sign versions, promote, rotate the root.

Every write produces signed metadata and goes through `Store`'s atomic writes; nothing here decides
what a client should trust (that is `registry.client`), but each operation re-verifies what it
builds on, so a maintainer never signs on top of tampered data.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from registry import channels as ch
from registry import layout
from registry.exceptions import (NotFoundError, ProposalConflict, RegistryError,
                                 VerificationError)
from registry.importer import source_digest, stage
from registry.manifest import Lineage, Manifest, build_manifest, version_id_of
from registry.policy import (KeyEntry, PublicKey, RoleEntry, RootPolicy, channel_role,
                             check_threshold, expires_in, iso, parse_time, snapshot_role, utcnow,
                             valid_signers, verify_initial_root, verify_rotation)
from registry.signing import Envelope, SigningKey
from registry.storage import Store

DEFAULT_ROOT_DAYS = 365
DEFAULT_CHANNEL_DAYS = 30


def _envelope(store: Store, rel: str) -> Envelope:
    try:
        return Envelope.model_validate_json(store.read(rel))
    except ValueError as exc:
        raise VerificationError("envelope-schema", f"{rel}: not a signed envelope ({exc})") from None


def _dump(envelope: Envelope) -> bytes:
    return (json.dumps(envelope.model_dump(mode="json"), indent=1, sort_keys=True) + "\n").encode()


def sign_all(envelope: Envelope, keys: list[SigningKey]) -> Envelope:
    for key in keys:
        envelope = key.sign(envelope)
    return envelope


def make_policy(*, version: int, registry: str, roles: dict[str, tuple[list[PublicKey], int]],
                extra_keys: dict[str, str] | None = None, revoked: list[str] | None = None,
                days: float = DEFAULT_ROOT_DAYS) -> RootPolicy:
    """Build a root policy from role -> (keys, threshold)."""
    keys = {k.keyid: KeyEntry(public=k.public_hex) for ks, _ in roles.values() for k in ks}
    for keyid, public in (extra_keys or {}).items():
        keys[keyid] = KeyEntry(public=public)
    return RootPolicy(
        registry=registry, version=version, expires=expires_in(days), keys=keys,
        roles={r: RoleEntry(keyids=sorted({k.keyid for k in ks}), threshold=t)
               for r, (ks, t) in roles.items()},
        revoked=revoked or [])


def init_registry(store: Store, policy: RootPolicy, root_keys: list[SigningKey],
                  snapshot_keys: list[SigningKey]) -> None:
    """Write root v1 and an empty snapshot (signed by `snapshot_keys`: keys of the `snapshot`
    role, or of `promote` when the policy has none). Refuses an already initialised store."""
    if has_registry(store):
        raise RegistryError(f"{store.url}: registry already initialised")
    envelope = sign_all(Envelope(signed=policy.model_dump(mode="json")), root_keys)
    verify_initial_root(envelope)
    store.write_new(layout.root(1), _dump(envelope))
    snap = ch.Snapshot(registry=policy.registry, version=1, expires=expires_in(DEFAULT_CHANNEL_DAYS),
                       channels={})
    _store_snapshot(store, _signed_snapshot(policy, snap, snapshot_keys))


def new_registry_id() -> str:
    return f"shoal-{uuid.uuid4().hex[:16]}"


def has_registry(store: Store) -> bool:
    """Whether `store` already holds a registry (its first root)."""
    return store.exists(layout.root(1))


def current_root(store: Store) -> RootPolicy:
    """The newest root in the store, verified along the chain from v1."""
    policy = verify_initial_root(_envelope(store, layout.root(1)))
    while store.exists(layout.root(policy.version + 1)):
        policy = verify_rotation(policy, _envelope(store, layout.root(policy.version + 1)))
    return policy


def rotate_root(store: Store, new: RootPolicy, signers: list[SigningKey]) -> Envelope:
    """Publish root `new` (must be current+1), signed by old and new root keys among `signers`."""
    trusted = current_root(store)
    envelope = sign_all(Envelope(signed=new.model_dump(mode="json")), signers)
    verify_rotation(trusted, envelope)
    store.write_new(layout.root(new.version), _dump(envelope))
    return envelope


@dataclass(frozen=True)
class Imported:
    version_id: str
    manifest: Manifest
    created: bool
    """False when the same content was already in the store (nothing was written)."""


def find_by_source(store: Store, name: str, digest: str) -> str | None:
    for hexid in store.list(layout.VERSIONS):
        try:
            signed = _envelope(store, layout.manifest(hexid)).signed
        except RegistryError:
            continue
        if signed.get("name") == name and signed.get("lineage", {}).get("source", {}).get(
                "sha256") == digest:
            return "sha256:" + hexid
    return None


def import_model(store: Store, source: Path, *, name: str | None = None,
                 release_keys: list[SigningKey] = (), lineage: Lineage | None = None,
                 work_dir: Path | None = None) -> Imported:
    """Stage, hash, sign and publish a model. The store is unchanged if anything fails."""
    staging = Path(tempfile.mkdtemp(prefix="shoal-import-", dir=work_dir))
    try:
        staged = stage(source, staging, name=name)
        lineage = lineage or Lineage(source=staged.source)
        manifest = build_manifest(staging, name=staged.name, architecture=staged.architecture,
                                  model_type=staged.model_type, num_layers=staged.num_layers,
                                  dtype=staged.dtype, lineage=lineage)
        return publish_dir(store, staging, manifest, release_keys)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(store: Store, directory: Path, manifest: Manifest,
                release_keys: list[SigningKey] = ()) -> Imported:
    """Upload a built version directory: blobs first, the manifest envelope last."""
    version_id = manifest.version_id
    rel = layout.manifest(version_id)
    if store.exists(rel):
        existing = _envelope(store, rel)
        if release_keys:
            store.write(rel, _dump(sign_all(existing, list(release_keys))))
        return Imported(version_id, manifest, created=False)
    for fname, entry in manifest.files.items():
        store.put_blob(directory / fname, entry.sha256)
    envelope = sign_all(Envelope(signed=manifest.to_json()), list(release_keys))
    store.write_new(rel, _dump(envelope))
    return Imported(version_id, manifest, created=True)


def import_default_if_missing(store: Store, source: Path, name: str,
                              release_keys: list[SigningKey]) -> Imported | str:
    """Skip the import when a version of `name` from this exact source file exists."""
    existing = find_by_source(store, name, source_digest(source))
    return existing if existing else import_model(store, source, name=name,
                                                  release_keys=release_keys)


def sign_version(store: Store, version_id: str, key: SigningKey) -> None:
    rel = layout.manifest(version_id)
    envelope = _envelope(store, rel)
    if version_id_of(envelope.signed) != version_id:
        raise VerificationError("manifest-digest", f"{rel} does not hash to {version_id}")
    store.write(rel, _dump(key.sign(envelope)))


def channel_head(store: Store, channel: str) -> Envelope | None:
    return _envelope(store, layout.channel_head(channel)) if store.exists(
        layout.channel_head(channel)) else None


def check_release(store: Store, policy: RootPolicy, version_id: str) -> Manifest:
    """What a maintainer checks before signing a channel record for `version_id`: the manifest
    hashes to the id, carries the `release` threshold, parses, and every file's blob is in the
    store with the manifest's size."""
    rel = layout.manifest(version_id)
    if not store.exists(rel):
        raise NotFoundError(f"version {version_id} is not in the registry")
    envelope = _envelope(store, rel)
    if version_id_of(envelope.signed) != version_id:
        raise VerificationError("manifest-digest", f"{rel} does not hash to {version_id}")
    check_threshold(envelope, policy, "release", what=f"manifest {version_id[:19]}")
    try:
        manifest = Manifest.model_validate(envelope.signed)
    except ValueError as exc:
        raise VerificationError("manifest-schema", f"malformed manifest: {exc}") from None
    for fname, entry in manifest.files.items():
        blob = layout.blob(entry.sha256)
        if not store.exists(blob) or store.fs.size(store._p(blob)) != entry.size:
            raise VerificationError("missing-file", f"{fname} of {version_id[:19]}: blob missing "
                                    "or of the wrong size in the registry")
    return manifest


@dataclass(frozen=True)
class Promotion:
    """Where a promotion stands after one maintainer signed it."""

    record: ch.ChannelRecord
    role: str
    """The role whose threshold the record needs (`promote`, or `staging` for staging channels)."""
    signed_by: list[str]
    """Key ids of the role that signed so far."""
    threshold: int
    published: bool
    """True once the threshold was met and the record is the channel's head."""


def propose(store: Store, version_id: str, channel: str, keys: list[SigningKey], *,
            note: str = "", days: float = DEFAULT_CHANNEL_DAYS,
            replace: bool = False) -> Promotion:
    """Sign a record pointing `channel` at `version_id`; publish it once the role's threshold is met.

    With fewer signatures than the threshold the record is kept as the channel's proposal
    (`layout.proposal`); another maintainer calling `propose` for the same version adds a signature
    to that same record, until the last one publishes it. A proposal made stale by a newer head is
    dropped; one for another version is a `ProposalConflict` unless `replace`. Every key must be
    in the role; the manifest is checked (`check_release`) before anything is signed.
    """
    policy, role, head = _prepare(store, version_id, channel, keys)
    threshold = policy.roles[role].threshold
    envelope = _pending(store, channel, head)
    if envelope is not None and envelope.signed["version"] != version_id:
        if not replace:
            raise ProposalConflict(
                f"{channel}: a proposal to point it at {envelope.signed['version'][:19]}… awaits "
                f"signatures ({len(valid_signers(envelope, policy, role))} of {threshold}); "
                "sign that version, or replace the proposal")
        envelope = None
    envelope = sign_all(envelope or _new_record(policy, channel, version_id, head, note, days),
                        keys)
    signers = sorted(valid_signers(envelope, policy, role))
    if len(signers) < threshold:
        store.write(layout.proposal(channel), _dump(envelope))
        return Promotion(ch.parse_record(envelope), role, signers, threshold, published=False)
    record = _publish(store, policy, envelope, role, keys, days)
    store.delete(layout.proposal(channel))
    return Promotion(record, role, signers, threshold, published=True)


def promote(store: Store, version_id: str, channel: str, keys: list[SigningKey], *,
            note: str = "", days: float = DEFAULT_CHANNEL_DAYS) -> ch.ChannelRecord:
    """Append a record pointing `channel` at `version_id`, signed by `keys` together, and a new
    snapshot; below the threshold nothing is written and the threshold error is raised (a pending
    proposal is left as it was)."""
    policy, role, head = _prepare(store, version_id, channel, keys)
    envelope = sign_all(_new_record(policy, channel, version_id, head, note, days), keys)
    return _publish(store, policy, envelope, role, keys, days)


def _prepare(store: Store, version_id: str, channel: str,
             keys: list[SigningKey]) -> tuple[RootPolicy, str, Envelope | None]:
    """The current policy, the role that signs `channel`, and its head, after checking the
    version and that every key may sign for that role."""
    policy = current_root(store)
    check_release(store, policy, version_id)
    role = channel_role(policy, channel)
    for key in keys:
        if key.keyid in policy.revoked:
            raise VerificationError("revoked-key", f"key {key.name!r} is revoked")
        if key.keyid not in policy.roles[role].keyids:
            raise VerificationError("wrong-role", f"key {key.name!r} may not sign {channel} "
                                    f"records: it is not in the registry's {role!r} role")
    return policy, role, channel_head(store, channel)


def _new_record(policy: RootPolicy, channel: str, version_id: str, head: Envelope | None,
                note: str, days: float) -> Envelope:
    prev = ch.parse_record(head) if head else None
    record = ch.ChannelRecord(
        registry=policy.registry, channel=channel, version=version_id,
        sequence=(prev.sequence + 1) if prev else 1, expires=expires_in(days),
        prev=ch.record_digest(head) if head else None, promoted_at=iso(utcnow()), note=note)
    return Envelope(signed=record.model_dump(mode="json"))


def _publish(store: Store, policy: RootPolicy, envelope: Envelope, role: str,
             keys: list[SigningKey], days: float) -> ch.ChannelRecord:
    """Write a fully signed record as the channel's head, and the snapshot naming it (signed by
    those of `keys` in the snapshot role); every check passes before anything is written."""
    record = ch.parse_record(envelope)
    check_threshold(envelope, policy, role, what=f"{record.channel} record {record.sequence}")
    snap = ch.parse_snapshot(_envelope(store, layout.SNAPSHOT))
    snap_env = _signed_snapshot(policy, ch.Snapshot(
        registry=policy.registry, version=snap.version + 1, expires=expires_in(days),
        channels={**snap.channels, record.channel: record.sequence}), keys)
    store.write_new(layout.channel_record(record.channel, record.sequence), _dump(envelope))
    store.write(layout.channel_head(record.channel), _dump(envelope))
    _store_snapshot(store, snap_env)
    return record


def pending_proposal(store: Store, channel: str) -> ch.ChannelRecord | None:
    """The record awaiting signatures on `channel`, if one is pending and still applies."""
    envelope = _pending(store, channel, channel_head(store, channel))
    return ch.parse_record(envelope) if envelope else None


def _pending(store: Store, channel: str, head: Envelope | None) -> Envelope | None:
    """The channel's proposal if it still follows `head` and has not expired; a stale one is
    removed."""
    rel = layout.proposal(channel)
    if not store.exists(rel):
        return None
    envelope = _envelope(store, rel)
    record = ch.parse_record(envelope)
    follows = record.prev == (ch.record_digest(head) if head else None)
    if follows and record.channel == channel and parse_time(record.expires) > utcnow():
        return envelope
    store.delete(rel)
    return None


def _signed_snapshot(policy: RootPolicy, snap: ch.Snapshot,
                     keys: list[SigningKey]) -> Envelope:
    role = snapshot_role(policy)
    envelope = sign_all(Envelope(signed=snap.model_dump(mode="json")),
                        [k for k in keys if k.keyid in policy.roles[role].keyids])
    check_threshold(envelope, policy, role, what=f"snapshot v{snap.version}")
    return envelope


def _store_snapshot(store: Store, envelope: Envelope) -> None:
    store.write_new(layout.snapshot(envelope.signed["version"]), _dump(envelope))
    store.write(layout.SNAPSHOT, _dump(envelope))
