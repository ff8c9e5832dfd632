"""The verifying side: what a node, gateway or verifier runs before it believes the registry.

A `RegistryClient` pins a root policy in its own state directory (a root file handed over out of
band, the registry's first root checked against a fingerprint handed over out of band, or, with
neither, trust on first use), walks root rotations forward one version at a time, and remembers
the newest snapshot and channel sequences it has seen. Every manifest, channel record and file it
returns has passed the checks in `registry.policy` and `registry.channels`; anything else raises a
`VerificationError` naming the failed check. Nothing here writes to the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from registry import channels as ch
from registry import layout, merkle
from registry.exceptions import NotFoundError, RegistryError, VerificationError
from registry.layout import MANIFEST_FILE, Role, checkout_dir
from registry.manifest import MERKLE_SUFFIX, Manifest, split_levels, tensor_levels, version_id_of
from registry.policy import (RootPolicy, channel_role, check_threshold, load_root, valid_signers,
                             snapshot_role, verify_initial_root, verify_rotation)
from registry.safetensors_header import read_header
from registry.signing import Envelope
from registry.storage import Store


def parse_envelope(data: bytes, what: str) -> Envelope:
    try:
        return Envelope.model_validate_json(data)
    except ValueError as exc:
        raise VerificationError("envelope-schema", f"{what}: not a signed envelope ({exc})") from None


def root_fingerprint(root_v1: bytes) -> str:
    """A registry's fingerprint: the SHA-256 (hex) of its first root file, `root/1.root.json`,
    exactly as stored (`sha256sum` computes it too). Short enough to hand over in an invite."""
    return hashlib.sha256(root_v1).hexdigest()


LOCAL_SCHEMES = frozenset({"", "file", "local", "memory"})
"""Store URLs read on this machine: the only ones whose first root may be pinned on first use."""


def _remote(url: str) -> bool:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return scheme not in LOCAL_SCHEMES


class RegistryClient:
    """Verified, read-only access to one registry."""

    def __init__(self, store: Store, state_dir: Path, *, trusted_root: Path | None = None,
                 fingerprint: str | None = None) -> None:
        self.store = store
        self.fingerprint = fingerprint.strip().lower() if fingerprint else None
        """The expected `root_fingerprint` of the store: when given, the first root is pinned
        only if it matches, and a client already pinned refuses a store whose first root does
        not (another registry at that address)."""
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._root_path = state_dir / "root.json"
        self._first_path = state_dir / "root.1.json"
        """The first root exactly as pinned: what a fingerprint given later is checked against."""
        self._seen_path = state_dir / "seen.json"
        if trusted_root is not None and not self._root_path.exists():
            given = trusted_root.read_bytes()
            if verify_initial_root(parse_envelope(given, str(trusted_root))).version == 1:
                _atomic_write(self._first_path, given)
            shutil.copyfile(trusted_root, self._root_path)
        self._policy: RootPolicy | None = None
        self.bytes_read = 0
        """Bytes fetched from the store by the last `checkout` (what a span verification read)."""

    # trust state -------------------------------------------------------------------------------

    def _seen(self) -> dict:
        return json.loads(self._seen_path.read_text()) if self._seen_path.exists() else {
            "snapshot": 0, "channels": {}}

    def _save_seen(self, seen: dict) -> None:
        """Merge into the stored state, keeping the highest of everything: several processes
        (nodes, gateway, CLI) may share one trust directory."""
        import fcntl

        with open(self.state_dir / "seen.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = self._seen()
            merged = {"snapshot": max(seen["snapshot"], stored["snapshot"]),
                      "channels": {c: max(seen["channels"].get(c, 0), stored["channels"].get(c, 0))
                                   for c in {*seen["channels"], *stored["channels"]}}}
            _atomic_write(self._seen_path, json.dumps(merged, indent=1, sort_keys=True).encode())

    def policy(self) -> RootPolicy:
        """The trusted root, updated forward through every newer root the store holds."""
        if self._policy is not None:
            return self._policy
        if self._root_path.exists():
            if self.fingerprint is not None:
                self._check_fingerprint(self._pinned_first(), "the pinned first root")
            trusted = load_root(parse_envelope(self._root_path.read_bytes(), "pinned root"))
        else:  # pin the first root: checked against the fingerprint, or on first use
            try:
                # read once: the bytes hashed are the bytes verified and pinned (a server that
                # answers differently the second time gains nothing)
                first = self.store.read(layout.root(1))
            except NotFoundError:
                raise NotFoundError(f"{self.store.url}: no registry here (no {layout.root(1)}); "
                                    "create one with `shoal registry init`") from None
            if self.fingerprint is not None:
                self._check_fingerprint(first, f"{self.store.url}: the first root")
            elif _remote(self.store.url):
                raise VerificationError(
                    "root-unpinned", f"{self.store.url} is read over the network and nothing "
                    "pins its root: give its fingerprint (--root-fingerprint, or `shoal registry "
                    "pin FINGERPRINT`; `shoal registry show` prints it on the registry's host)")
            trusted = verify_initial_root(parse_envelope(first, "root v1"))
            _atomic_write(self._first_path, first)
            _atomic_write(self._root_path, first)
        while self.store.exists(layout.root(trusted.version + 1)):
            data = self.store.read(layout.root(trusted.version + 1))
            trusted = verify_rotation(trusted, parse_envelope(data, f"root v{trusted.version + 1}"))
            _atomic_write(self._root_path, data)
        if trusted.expired():
            raise VerificationError("root-expired", f"root v{trusted.version} expired at "
                                    f"{trusted.expires}")
        self._policy = trusted
        return trusted

    def _pinned_first(self) -> bytes:
        """The first root this trust directory pinned (a pin made before the first root was kept
        apart is checkable only while it is still that root)."""
        if self._first_path.exists():
            return self._first_path.read_bytes()
        pinned = self._root_path.read_bytes()
        if load_root(parse_envelope(pinned, "pinned root")).version == 1:
            return pinned
        raise VerificationError("root-fingerprint", f"{self.state_dir} pinned a rotated root "
                                "without its first one, so a fingerprint cannot be checked "
                                "against it; pin again in a fresh trust directory")

    def _check_fingerprint(self, first: bytes, what: str) -> None:
        got = root_fingerprint(first)
        if got != self.fingerprint:
            raise VerificationError("root-fingerprint", f"{what} hashes to {got[:16]}…, not the "
                                    f"expected {self.fingerprint[:16]}…")

    # versions ----------------------------------------------------------------------------------

    def manifest(self, version_id: str) -> Manifest:
        """A version's manifest after checking its digest and its `release` signatures."""
        rel = layout.manifest(version_id)
        return self.check_manifest(parse_envelope(self.store.read(rel), rel), version_id)

    def check_manifest(self, envelope: Envelope, version_id: str | None = None) -> Manifest:
        actual = version_id_of(envelope.signed)
        if version_id is not None and actual != version_id:
            raise VerificationError("manifest-digest", f"manifest hashes to {actual[:19]}…, "
                                    f"not the requested {version_id[:19]}…")
        check_threshold(envelope, self.policy(), "release", what=f"manifest {actual[:19]}…")
        try:
            return Manifest.model_validate(envelope.signed)
        except ValueError as exc:
            raise VerificationError("manifest-schema", f"malformed manifest: {exc}") from None

    def versions(self) -> list[str]:
        return ["sha256:" + h for h in self.store.list(layout.VERSIONS)]

    def resolve(self, ref: str) -> str:
        """Turn ``name@channel``, ``name@<hex prefix>``, a channel or a version id into a
        verified version id."""
        name, _, what = ref.rpartition("@") if "@" in ref else ("", "", ref)
        if self.has_channel(what):
            version_id = self.channel(what).version
        else:
            prefix = what.removeprefix("sha256:")
            matches = [v for v in self.versions() if v.removeprefix("sha256:").startswith(prefix)]
            if len(prefix) < 6 or not matches:
                hint = "" if self.store.exists(layout.root(1)) else (
                    f" (no registry at {self.store.url}: create one with `shoal registry init`)")
                raise NotFoundError(f"{ref!r}: no channel or version matches{hint}")
            if len(matches) > 1:
                raise NotFoundError(f"{ref!r}: ambiguous version prefix ({len(matches)} match)")
            version_id = matches[0]
        manifest = self.manifest(version_id)
        if name and manifest.name != name:
            raise VerificationError("model-name", f"{ref!r} resolves to a version of "
                                    f"{manifest.name!r}")
        return version_id

    # channels ----------------------------------------------------------------------------------

    def snapshot(self) -> ch.Snapshot:
        envelope = parse_envelope(self.store.read(layout.SNAPSHOT), "snapshot")
        policy = self.policy()
        check_threshold(envelope, policy, snapshot_role(policy), what="snapshot")
        snap = ch.parse_snapshot(envelope)
        seen = self._seen()
        ch.check_snapshot(snap, registry=policy.registry, seen_version=seen["snapshot"])
        seen["snapshot"] = snap.version
        self._save_seen(seen)
        return snap

    def channel(self, channel: str) -> ch.ChannelRecord:
        """The verified head of `channel`; remembers its sequence to refuse rollbacks later."""
        snap = self.snapshot()
        envelope = parse_envelope(self.store.read(layout.channel_head(channel)),
                                  f"{channel} head")
        return self.check_channel_record(envelope, channel, snap)

    def check_channel_record(self, envelope: Envelope, channel: str,
                             snap: ch.Snapshot) -> ch.ChannelRecord:
        policy = self.policy()
        check_threshold(envelope, policy, channel_role(policy, channel), what=f"{channel} record")
        record = ch.parse_record(envelope)
        seen = self._seen()
        ch.check_record(record, channel=channel, registry=policy.registry, snapshot=snap,
                        seen_sequence=seen["channels"].get(channel, 0))
        seen["channels"][channel] = record.sequence
        self._save_seen(seen)
        return record

    def history(self, channel: str) -> list[ch.ChannelRecord]:
        """Every record of `channel`, oldest first, with signatures and the hash chain checked."""
        return [record for record, _ in self.signed_history(channel)]

    def signed_history(self, channel: str) -> list[tuple[ch.ChannelRecord, list[str]]]:
        """`history`, each record with the key ids whose signatures on it verify (the channel's
        role, none revoked; at least the role's threshold of them)."""
        policy = self.policy()
        records, prev_digest = [], None
        for fname in self.store.list(layout.channel_dir(channel)):
            if fname == "head.json":
                continue
            envelope = parse_envelope(self.store.read(f"{layout.channel_dir(channel)}/{fname}"), fname)
            check_threshold(envelope, policy, channel_role(policy, channel),
                            what=f"{channel}/{fname}")
            record = ch.parse_record(envelope)
            if record.prev != prev_digest or record.sequence != len(records) + 1:
                raise VerificationError("history-chain", f"{channel}/{fname} does not follow "
                                        "the record before it")
            signers = sorted(valid_signers(envelope, policy, channel_role(policy, channel)))
            records.append((record, signers))
            prev_digest = ch.record_digest(envelope)
        return records

    # files -------------------------------------------------------------------------------------

    def checkout(self, version_id: str, dest: Path, *, files: list[str] | None = None) -> Manifest:
        """Fetch `files` (default: all) of a verified version into `dest`, checking every byte.

        Returns the manifest; `dest` also gets the signed manifest envelope, so the directory can
        be verified again offline (`verify_dir`). Already-present files are re-hashed, not fetched.
        """
        manifest = self.manifest(version_id)
        dest.mkdir(parents=True, exist_ok=True)
        self.bytes_read = 0
        for fname in files if files is not None else sorted(manifest.files):
            entry = manifest.files.get(fname)
            if entry is None:
                raise NotFoundError(f"{fname}: not a file of version {version_id[:19]}…")
            target = dest / fname
            if target.exists() and _same_file(target, entry.size, entry.sha256):
                continue
            try:
                self.bytes_read += self.store.fetch_blob(entry.sha256, entry.size, target,
                                                         label=fname)
            except NotFoundError:
                raise VerificationError("missing-file", f"{fname}: blob missing from the "
                                        "registry") from None
        rel = layout.manifest(version_id)
        _atomic_write(dest / MANIFEST_FILE, self.store.read(rel))
        return manifest

    def open_span(self, version_id: str, start: int, end: int, dest: Path) -> Manifest:
        """Fetch and verify only what a node serving layers [start, end) needs."""
        files = self.manifest(version_id).files_for("span", (start, end))
        return self.checkout(version_id, dest, files=files)

    def checkout_role(self, version_id: str, models_dir: Path, role: Role,
                      span: tuple[int, int] | None = None) -> tuple[Path, Manifest]:
        """Fetch and verify what `role` needs of a version into its directory under `models_dir`
        (`layout.checkout_dir`); returns (directory, manifest). Every process checks out this way:
        `shoal node|gateway|chat`, the channel watchers, training and benchmarks."""
        manifest = self.manifest(version_id)
        directory = checkout_dir(models_dir, version_id, role, span)
        self.checkout(version_id, directory, files=manifest.files_for(role, span))
        return directory, manifest

    def has_channel(self, channel: str) -> bool:
        """Whether the registry holds a head record for `channel` (not yet verified)."""
        return self.store.exists(layout.channel_head(channel))

    def verify_dir(self, directory: Path, *, partial: bool = False) -> Manifest:
        """Re-verify a checked-out directory offline: signatures, every file, every tensor root.

        With `partial`, files of the version that are absent are allowed (a node's span
        checkout); files that are present but not in the manifest are always refused.
        """
        path = directory / MANIFEST_FILE
        if not path.exists():
            raise VerificationError("missing-file", f"{directory}: no {MANIFEST_FILE}")
        manifest = self.check_manifest(parse_envelope(path.read_bytes(), str(path)))
        present = {p.name for p in directory.iterdir() if p.is_file()} - {MANIFEST_FILE}
        extra = sorted(present - set(manifest.files))
        missing = sorted(set(manifest.files) - present)
        if extra:
            raise VerificationError("extra-file", f"{directory}: files not in the manifest: {extra}")
        if missing and not partial:
            raise VerificationError("missing-file", f"{directory}: missing files: {missing}")
        for fname in sorted(present):
            entry = manifest.files[fname]
            if not _same_file(directory / fname, entry.size, entry.sha256):
                raise VerificationError("file-hash", f"{directory / fname}: content does not "
                                        "match the manifest")
            if fname.endswith(".safetensors"):
                verify_tensors(directory / fname, manifest)
        return manifest


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a per-writer temp name and rename, so concurrent writers never collide and
    readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _same_file(path: Path, size: int, sha256: str) -> bool:
    from registry.manifest import hash_file

    if path.stat().st_size != size:
        return False
    return hash_file(path).sha256 == sha256


def verify_tensors(shard: Path, manifest: Manifest) -> None:
    """Check a shard's header strictly and every tensor's Merkle root against the manifest."""
    header = read_header(shard)
    expected = {n: t for n, t in manifest.tensors.items() if t.file == shard.name}
    if set(header.tensors) != set(expected):
        raise VerificationError("tensor-set", f"{shard.name}: tensors differ from the manifest")
    with open(shard, "rb") as fh:
        for tname, info in header.tensors.items():
            entry = expected[tname]
            if (info.dtype, list(info.shape), info.begin) != (entry.dtype, entry.shape,
                                                              entry.offset):
                raise VerificationError("tensor-layout", f"{shard.name}:{tname} layout differs")
            root = tensor_levels(fh, info, manifest.chunk_size)[-1][0].hex()
            if root != entry.root:
                raise VerificationError("tensor-root", f"{shard.name}:{tname}: Merkle root "
                                        "does not match the manifest")


def chunk_path(directory: Path, manifest: Manifest, tensor: str, index: int) -> list[bytes]:
    """The Merkle path of chunk `index` of `tensor`, read from the shard's sidecar."""
    from safetensors.numpy import load_file

    entry = manifest.tensors.get(tensor)
    if entry is None:
        raise NotFoundError(f"{tensor}: not a tensor of {manifest.name}")
    if not 0 <= index < entry.chunks:
        raise RegistryError(f"{tensor}: chunk {index} out of range (0..{entry.chunks - 1})")
    sidecar = directory / (entry.file.removesuffix(".safetensors") + MERKLE_SUFFIX)
    flat = load_file(str(sidecar))[tensor].tobytes()
    return merkle.path_of(split_levels(flat, entry.chunks), index)


def verify_chunk(manifest: Manifest, tensor: str, index: int, chunk: bytes,
                 path: list[bytes]) -> bool:
    entry = manifest.tensors.get(tensor)
    return entry is not None and merkle.verify_path(bytes.fromhex(entry.root), entry.chunks,
                                                    index, chunk, path)
