"""Ed25519 keys, canonical JSON and signature envelopes.

Every piece of signed metadata is an envelope ``{"signed": {...}, "signatures": [{keyid, sig}]}``
(TUF's shape). Signatures cover the canonical encoding of ``signed``: UTF-8 JSON with sorted keys,
no whitespace and no NaN. A key id is the SHA-256 of the raw 32-byte public key.

Private keys live in PEM files with mode 0600, optionally encrypted with a passphrase. This module
knows nothing about roles or thresholds; `registry.policy` decides whose signature counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from registry.exceptions import KeyError_, NotFoundError


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that get hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def public_key_id(public_hex: str) -> str:
    return sha256_hex(bytes.fromhex(public_hex))


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keyid: str
    sig: str
    """Hex-encoded 64-byte Ed25519 signature over canonical_json(signed)."""


class Envelope(BaseModel):
    """Signed metadata as stored: the payload and the signatures over it."""

    model_config = ConfigDict(extra="forbid")
    signed: dict[str, Any]
    signatures: list[Signature] = []

    def payload(self) -> bytes:
        return canonical_json(self.signed)


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded into memory, with the name it was stored under."""

    name: str
    private: Ed25519PrivateKey

    @functools.cached_property
    def public_hex(self) -> str:
        """Computed once per key: nodes read it on every traversal (tags, results)."""
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        return raw.hex()

    @property
    def keyid(self) -> str:
        return public_key_id(self.public_hex)

    def sign(self, envelope: Envelope) -> Envelope:
        """Add this key's signature to `envelope` (replacing an older one by the same key)."""
        sig = Signature(keyid=self.keyid, sig=self.private.sign(envelope.payload()).hex())
        others = [s for s in envelope.signatures if s.keyid != self.keyid]
        return Envelope(signed=envelope.signed, signatures=[*others, sig])

    def sign_bytes(self, data: bytes) -> str:
        return self.private.sign(data).hex()

    @classmethod
    def generate(cls, name: str) -> "SigningKey":
        return cls(name, Ed25519PrivateKey.generate())


def verify_signature(public_hex: str, signature_hex: str, data: bytes) -> bool:
    """True only for a valid Ed25519 signature; malformed keys or signatures are False."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        key.verify(bytes.fromhex(signature_hex), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _key_path(directory: Path, name: str) -> Path:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise KeyError_(f"key name {name!r} must be letters, digits, '-', '_' or '.'")
    return directory / f"{name}.pem"


def save_key(key: SigningKey, directory: Path, passphrase: str | None = None) -> Path:
    """Write `key` as PKCS#8 PEM with mode 0600; refuse to overwrite an existing key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _key_path(directory, key.name)
    encryption = (serialization.BestAvailableEncryption(passphrase.encode())
                  if passphrase else serialization.NoEncryption())
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    encryption)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path}: a key with this name already exists") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    (directory / f"{key.name}.pub").write_text(key.public_hex + "\n")
    return path


def load_key(directory: Path, name: str, passphrase: str | None = None) -> SigningKey:
    """Load a private key; refuses group- or world-readable files."""
    path = _key_path(directory, name)
    if not path.exists():
        raise NotFoundError(f"{path}: no such key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyError_(f"{path}: permissions {oct(mode)} are too open; chmod 600 it")
    try:
        private = serialization.load_pem_private_key(
            path.read_bytes(), passphrase.encode() if passphrase else None)
    except TypeError as exc:
        raise KeyError_(f"{path}: {exc} (is a passphrase needed?)") from None
    except ValueError as exc:
        raise KeyError_(f"{path}: cannot decrypt or parse key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyError_(f"{path}: not an Ed25519 key")
    return SigningKey(name, private)


@dataclass(frozen=True)
class KeyInfo:
    name: str
    keyid: str
    public_hex: str
    encrypted: bool


def list_keys(directory: Path) -> list[KeyInfo]:
    """The keys stored in `directory`, by name."""
    out = []
    for pub in sorted(directory.glob("*.pub")) if directory.exists() else []:
        public_hex = pub.read_text().strip()
        pem = pub.with_suffix(".pem")
        encrypted = pem.exists() and b"ENCRYPTED" in pem.read_bytes()
        out.append(KeyInfo(pub.stem, public_key_id(public_hex), public_hex, encrypted))
    return out


def save_public_key(directory: Path, name: str, public_hex: str) -> KeyInfo:
    """Store another maintainer's public key as `NAME.pub` (no private half), so policies can
    name it; refuses a malformed key or an existing name."""
    public_hex = public_hex.strip().lower()
    path = _key_path(directory, name).with_suffix(".pub")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError:
        raise KeyError_(f"{public_hex!r}: not an Ed25519 public key (64 hex digits)") from None
    if path.exists():
        raise KeyError_(f"{path}: a key with this name already exists")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(public_hex + "\n")
    return KeyInfo(name, public_key_id(public_hex), public_hex, encrypted=False)
