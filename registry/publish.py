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
from registry.exceptions import NotFoundError, RegistryError, VerificationError
from registry.importer import source_digest, stage
from registry.manifest import Lineage, Manifest, build_manifest, version_id_of
from registry.policy import (KeyEntry, RoleEntry, RootPolicy, check_threshold, expires_in, iso,
                             utcnow, verify_initial_root, verify_rotation)
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


def make_policy(*, version: int, registry: str, roles: dict[str, tuple[list[SigningKey], int]],
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
                  promote_keys: list[SigningKey]) -> None:
    """Write root v1 and an empty snapshot. Refuses an already initialised store."""
    if has_registry(store):
        raise RegistryError(f"{store.url}: registry already initialised")
    envelope = sign_all(Envelope(signed=policy.model_dump(mode="json")), root_keys)
    verify_initial_root(envelope)
    store.write_new(layout.root(1), _dump(envelope))
    snap = ch.Snapshot(registry=policy.registry, version=1, expires=expires_in(DEFAULT_CHANNEL_DAYS),
                       channels={})
    _write_snapshot(store, policy, snap, promote_keys)


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


def promote(store: Store, version_id: str, channel: str, keys: list[SigningKey], *,
            note: str = "", days: float = DEFAULT_CHANNEL_DAYS) -> ch.ChannelRecord:
    """Append a signed record pointing `channel` at `version_id`, and a new snapshot."""
    policy = current_root(store)
    rel = layout.manifest(version_id)
    if not store.exists(rel):
        raise NotFoundError(f"version {version_id} is not in the registry")
    manifest_env = _envelope(store, rel)
    if version_id_of(manifest_env.signed) != version_id:
        raise VerificationError("manifest-digest", f"{rel} does not hash to {version_id}")
    check_threshold(manifest_env, policy, "release", what=f"manifest {version_id[:19]}")
    head = channel_head(store, channel)
    prev = ch.parse_record(head) if head else None
    record = ch.ChannelRecord(
        registry=policy.registry, channel=channel, version=version_id,
        sequence=(prev.sequence + 1) if prev else 1, expires=expires_in(days),
        prev=ch.record_digest(head) if head else None, promoted_at=iso(utcnow()), note=note)
    envelope = sign_all(Envelope(signed=record.model_dump(mode="json")), keys)
    check_threshold(envelope, policy, "promote", what=f"{channel} record {record.sequence}")
    store.write_new(layout.channel_record(channel, record.sequence), _dump(envelope))
    store.write(layout.channel_head(channel), _dump(envelope))
    snap_env = _envelope(store, layout.SNAPSHOT)
    snap = ch.parse_snapshot(snap_env)
    _write_snapshot(store, policy, ch.Snapshot(
        registry=policy.registry, version=snap.version + 1, expires=expires_in(days),
        channels={**snap.channels, channel: record.sequence}), keys)
    return record


def _write_snapshot(store: Store, policy: RootPolicy, snap: ch.Snapshot,
                    keys: list[SigningKey]) -> None:
    envelope = sign_all(Envelope(signed=snap.model_dump(mode="json")), keys)
    check_threshold(envelope, policy, "promote", what=f"snapshot v{snap.version}")
    store.write_new(layout.snapshot(snap.version), _dump(envelope))
    store.write(layout.SNAPSHOT, _dump(envelope))
