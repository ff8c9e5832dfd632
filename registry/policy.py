"""The trust policy: which keys may sign what, how many must agree, and how that changes.

The policy is a signed *root* document (TUF's root role, with shoal's roles):

- ``root``    signs root documents (rotation, revocation);
- ``release`` signs model manifests;
- ``promote`` signs channel records and the snapshot;
- ``node``    (optional) lists node identities the maintainers vouch for; node keys never sign
  releases or promotions.

Each role names key ids and a threshold k (k-of-n). A client pins one root version and moves forward
only one version at a time: root n+1 must be signed by a threshold of root n's root keys *and* a
threshold of its own, so neither a stolen old key nor a forged new document alone can take over.
Revoked key ids never count, in any role.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.exceptions import VerificationError
from registry.signing import Envelope, verify_signature

REQUIRED_ROLES = ("root", "release", "promote")


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
