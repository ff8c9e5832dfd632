"""The trust policy: which keys may sign what, how many must agree, and how that changes.

The policy is a signed *root* document (TUF's root role, with shoal's roles):

- ``root``    signs root documents (rotation, revocation);
- ``release`` signs model manifests;
- ``promote`` signs channel records (every channel, unless ``staging`` covers it) and the snapshot;
- ``staging`` (optional) signs the records of ``staging`` and ``staging-*`` channels instead of
  ``promote``, so the host that trains and gates candidates never holds a key that moves
  ``production``;
- ``snapshot`` (optional) signs the snapshot instead of ``promote``: an online role (TUF's
  snapshot role) that both the staging host and the maintainers can sign with, at threshold 1,
  while ``production`` still needs the ``promote`` threshold;
- ``node``    (optional) lists node identities the maintainers vouch for; node keys never sign
  releases or promotions.

Each role names key ids and a threshold k (k-of-n). A client pins one root version and moves forward
only one version at a time: root n+1 must be signed by a threshold of root n's root keys *and* a
threshold of its own, so neither a stolen old key nor a forged new document alone can take over.
Revoked key ids never count, in any role.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from registry.exceptions import PolicyError, VerificationError
from registry.signing import Envelope, verify_signature

REQUIRED_ROLES = ("root", "release", "promote")
STAGING_CHANNEL = "staging"
"""Channels named so, or `staging-<suffix>`, are signed by the ``staging`` role when there is one."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expires_in(days: float) -> str:
    return iso(utcnow() + timedelta(days=days))


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    scheme: Literal["ed25519"] = "ed25519"
    public: str = Field(pattern=r"^[0-9a-f]{64}$")


class RoleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keyids: list[str]
    threshold: int = Field(ge=1)


class RootPolicy(BaseModel):
    """The signed part of a root document."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["root"] = "root"
    registry: str = Field(description="registry identity; every record of this registry names it")
    version: int = Field(ge=1)
    expires: str
    keys: dict[str, KeyEntry]
    roles: dict[str, RoleEntry]
    revoked: list[str] = []

    def model_post_init(self, _: object) -> None:
        for role in REQUIRED_ROLES:
            if role not in self.roles:
                raise ValueError(f"root policy lacks the {role!r} role")
        for name, role in self.roles.items():
            missing = [k for k in role.keyids if k not in self.keys]
            if missing:
                raise ValueError(f"role {name!r} names unknown key ids {missing}")
            if role.threshold > len(role.keyids):
                raise ValueError(f"role {name!r}: threshold {role.threshold} > "
                                 f"{len(role.keyids)} keys")

    def expired(self, now: datetime | None = None) -> bool:
        return parse_time(self.expires) <= (now or utcnow())


def channel_role(policy: RootPolicy, channel: str) -> str:
    """The role whose keys sign records of `channel`: ``staging`` for the staging channels when the
    policy has that role, ``promote`` for everything else."""
    staging = channel == STAGING_CHANNEL or channel.startswith(STAGING_CHANNEL + "-")
    return "staging" if staging and "staging" in policy.roles else "promote"


def snapshot_role(policy: RootPolicy) -> str:
    """The role whose keys sign the snapshot: ``snapshot`` when the policy has it, else
    ``promote``."""
    return "snapshot" if "snapshot" in policy.roles else "promote"


def valid_signers(envelope: Envelope, policy: RootPolicy, role: str) -> set[str]:
    """Key ids of `role`, not revoked, whose signature on `envelope` verifies."""
    entry = policy.roles.get(role)
    payload = envelope.payload()
    return {sig.keyid for sig in envelope.signatures
            if entry is not None and sig.keyid in entry.keyids and sig.keyid not in policy.revoked
            and sig.keyid in policy.keys
            and verify_signature(policy.keys[sig.keyid].public, sig.sig, payload)}


def check_threshold(envelope: Envelope, policy: RootPolicy, role: str, *, what: str) -> None:
    """Raise unless `envelope` carries valid signatures by `threshold` distinct keys of `role`.

    The error's check names the most specific reason: ``unsigned``, ``revoked-key``,
    ``wrong-role``, ``unknown-key``, ``bad-signature`` or ``threshold``.
    """
    entry = policy.roles.get(role)
    if entry is None:
        raise VerificationError("unknown-role", f"{what}: the policy has no {role!r} role")
    payload = envelope.payload()
    good: set[str] = set()
    reasons: list[str] = []
    for sig in envelope.signatures:
        if sig.keyid in policy.revoked:
            reasons.append("revoked-key")
        elif sig.keyid not in policy.keys:
            reasons.append("unknown-key")
        elif not verify_signature(policy.keys[sig.keyid].public, sig.sig, payload):
            reasons.append("bad-signature")
        elif sig.keyid not in entry.keyids:
            reasons.append("wrong-role")
        else:
            good.add(sig.keyid)
    if len(good) >= entry.threshold:
        return
    if not envelope.signatures:
        raise VerificationError("unsigned", f"{what} carries no signature")
    for reason in ("bad-signature", "revoked-key", "wrong-role", "unknown-key"):
        if reason in reasons:
            detail = {
                "bad-signature": "a signature does not verify",
                "revoked-key": "signed by a revoked key",
                "wrong-role": f"signed by a key that is not in the {role!r} role",
                "unknown-key": "signed by a key that is not in the trust policy",
            }[reason]
            raise VerificationError(reason, f"{what}: {detail}; needs {entry.threshold} "
                                    f"{role!r} signature(s), has {len(good)}")
    raise VerificationError("threshold", f"{what}: {len(good)} valid {role!r} signature(s), "
                            f"threshold is {entry.threshold}")


def load_root(envelope: Envelope) -> RootPolicy:
    try:
        return RootPolicy.model_validate(envelope.signed)
    except ValueError as exc:
        raise VerificationError("root-schema", f"malformed root document: {exc}") from None


def verify_initial_root(envelope: Envelope) -> RootPolicy:
    """Check a self-signed first root (the one a client pins on first use)."""
    policy = load_root(envelope)
    check_threshold(envelope, policy, "root", what=f"root v{policy.version}")
    return policy


def verify_rotation(trusted: RootPolicy, envelope: Envelope) -> RootPolicy:
    """Accept root version trusted+1, signed by thresholds of both the old and the new root keys."""
    new = load_root(envelope)
    if new.version != trusted.version + 1:
        raise VerificationError("root-version", f"root v{new.version} cannot follow trusted "
                                f"v{trusted.version}: versions must go up by exactly one")
    if new.registry != trusted.registry:
        raise VerificationError("registry-id", f"root v{new.version} belongs to registry "
                                f"{new.registry!r}, not {trusted.registry!r}")
    check_threshold(envelope, trusted, "root", what=f"root v{new.version} (by old root keys)")
    check_threshold(envelope, new, "root", what=f"root v{new.version} (by new root keys)")
    return new


class PublicKey(Protocol):
    """What a policy needs of a key: a signing key, or only its public half
    (`registry.signing.KeyInfo`)."""

    @property
    def keyid(self) -> str: ...

    @property
    def public_hex(self) -> str: ...


def revise(current: RootPolicy, *, roles: dict[str, list[PublicKey]] | None = None,
           thresholds: dict[str, int] | None = None, revoke: list[str] = (),
           expires: str) -> RootPolicy:
    """Root `current.version + 1`: `roles` given replace those roles' keys, `thresholds` given
    replace theirs, every id in `revoke` is listed as revoked and leaves every role; everything
    else carries over. Raises `PolicyError` naming the role a change would leave unsatisfiable."""
    keys = dict(current.keys)
    members = {name: list(entry.keyids) for name, entry in current.roles.items()}
    for name, role_keys in (roles or {}).items():
        members[name] = sorted({k.keyid for k in role_keys})
        keys.update({k.keyid: KeyEntry(public=k.public_hex) for k in role_keys})
    revoked = sorted({*current.revoked, *revoke})
    unknown = [k for k in revoke if k not in keys]
    if unknown:
        raise PolicyError(f"cannot revoke {unknown}: not keys of this registry")
    for name in (thresholds or {}):
        if name not in members:
            raise PolicyError(f"--threshold {name}: the policy has no {name!r} role")
    new_roles = {}
    for name, ids in members.items():
        ids = [k for k in ids if k not in revoked]
        threshold = (thresholds or {}).get(name, current.roles[name].threshold
                                           if name in current.roles else 1)
        if threshold > len(ids):
            raise PolicyError(f"role {name!r} would have {len(ids)} key(s) for threshold "
                              f"{threshold}: add keys to it (or lower the threshold) in the same "
                              "rotation")
        new_roles[name] = RoleEntry(keyids=ids, threshold=threshold)
    used = {k for entry in new_roles.values() for k in entry.keyids} | set(revoked)
    return RootPolicy(registry=current.registry, version=current.version + 1, expires=expires,
                      keys={k: v for k, v in keys.items() if k in used}, roles=new_roles,
                      revoked=revoked)
