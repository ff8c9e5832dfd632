"""Swarm membership for DHT discovery: invites, the keys derived from a swarm's secret, and the
sealing of every value stored in the DHT.

An invite names a swarm, carries its membership secret, some bootstrap peers (any peer of the
swarm will do; none is distinguished) and, optionally, the fingerprint of the registry the swarm
serves from (its root, pinned by whoever joins). Everything else comes from the secret:

- **where** records live: DHT keys are HMAC-SHA256(secret, label)[:20], so a process without the
  secret cannot even compute which keys hold the swarm's records;
- **what** is stored: every value is sealed with ChaCha20-Poly1305 (the `cryptography` package's
  AEAD, not a home-made cipher) under a key derived from the secret, with the DHT key as associated
  data, so a value cannot be read without the secret, nor forged, nor copied to another key.

A swarm joined with bare addresses and no invite is an *open* swarm: its secret is derived from
its public name, so anyone may join it (Petals' permissionless default); node records are still
signed by their nodes and checked by every reader, so openness never lets anyone speak for
another node.

This module knows nothing about node records or the DHT library (serve/dht.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve.exceptions import InviteError

log = logging.getLogger("shoal.discovery")

INVITE_PREFIX = "shoal-invite1:"
"""Every invite starts with this (the rest is base64url JSON), so it is never taken for an
address."""
OPEN_SWARM = "public"
"""The open swarm that bare `--join HOST:PORT` addresses join."""
KEY_BYTES = 20
"""DHT keys are 160 bits (the `kademlia` package's id space)."""
NONCE_BYTES = 12
_LABEL = re.compile(r"^[\w.-]{1,64}$")


class Peer(BaseModel):
    """A DHT peer's UDP address (an IP literal: the DHT library takes no host names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _ip(cls, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """`HOST:PORT` as a `Peer`; raises `InviteError`."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise InviteError(f"{text!r} is not HOST:PORT")
    try:
        return Peer(host=host.strip("[]"), port=int(port))
    except ValidationError as exc:
        raise InviteError(f"{text!r}: {exc.errors()[0]['msg']}") from None


class Invite(BaseModel):
    """What a process needs to join a swarm's DHT: its name, secret and bootstrap peers."""

    model_config = ConfigDict(extra="forbid")
    swarm: str = Field(pattern=_LABEL.pattern)
    """The swarm's name (shown, and mixed into every derived key)."""
    secret: str = Field(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")
    """256-bit membership secret, hex."""
    peers: list[Peer] = Field(default_factory=list, max_length=64)
    """Bootstrap peers: any members' DHT addresses."""
    registry: str | None = Field(None, pattern="^[0-9a-f]{64}$")
    """The fingerprint of the registry the swarm serves from (`registry.client.root_fingerprint`):
    a joining node or gateway pins that registry's root only if it matches, so `--join INVITE`
    alone never trusts a registry on first use."""

    def encode(self) -> str:
        """The invite as one copy-pasteable token."""
        body = json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()
        return INVITE_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    def with_peers(self, peers: list[Peer]) -> "Invite":
        return self.model_copy(update={"peers": list(dict.fromkeys([*self.peers, *peers]))})


def new_invite(swarm: str, peers: list[Peer]) -> Invite:
    """A fresh private swarm: a random secret (os.urandom) and its first bootstrap peers."""
    try:
        return Invite(swarm=swarm, secret=os.urandom(32).hex(), peers=peers)
    except ValidationError as exc:
        raise InviteError(f"swarm name {swarm!r}: {exc.errors()[0]['msg']}") from None


def open_invite(peers: list[Peer], swarm: str = OPEN_SWARM) -> Invite:
    """The open swarm `swarm`: its secret is public (derived from the name)."""
    secret = hashlib.sha256(f"shoal open swarm {swarm}".encode()).hexdigest()
    return Invite(swarm=swarm, secret=secret, peers=peers)


def decode_invite(token: str) -> Invite:
    """Parse an invite token; raises `InviteError` saying what is wrong."""
    token = token.strip()
    if not token.startswith(INVITE_PREFIX):
        raise InviteError(f"an invite starts with {INVITE_PREFIX!r}")
    body = token[len(INVITE_PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return Invite.model_validate(data)
    except (ValueError, TypeError) as exc:
        raise InviteError(f"the invite is malformed ({type(exc).__name__})") from None


def _read_at_file(value: str) -> str:
    """`@FILE` stands for the file's content (an invite kept out of the process's argv, which
    any local user can read in /proc); anything else is itself."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).expanduser().read_text().strip()
    except OSError as exc:
        raise InviteError(f"--join {value}: cannot read the invite file ({exc.strerror})") from None


def join_invite(values: list[str]) -> Invite:
    """The swarm that `--join` values name: at most one invite token (or `@FILE` holding one)
    plus any `HOST:PORT` peers (added to its bootstrap peers); without a token, the open swarm,
    which anyone who can reach a peer may read and announce into (a warning says so)."""
    values = [_read_at_file(v.strip()) for v in values]
    tokens = [v for v in values if v.strip().startswith(INVITE_PREFIX)]
    if len(tokens) > 1:
        raise InviteError("--join takes at most one invite (and any number of HOST:PORT peers)")
    peers = [parse_peer(v) for v in values if not v.strip().startswith(INVITE_PREFIX)]
    if tokens:
        return decode_invite(tokens[0]).with_peers(peers)
    log.warning("--join without an invite: joining the open swarm, which anyone who reaches a "
                "peer can read and announce into (`shoal swarm invite` makes a private one)")
    return open_invite(peers)


class SwarmKeys:
    """The DHT keys and the sealing key of one swarm, derived from its secret."""

    def __init__(self, invite: Invite) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self.swarm = invite.swarm
        self._secret = bytes.fromhex(invite.secret)
        self._aead = ChaCha20Poly1305(self._derive(b"seal"))
        self.index = self.key("index")
        """Where the swarm's membership index lives."""

    def _derive(self, label: bytes) -> bytes:
        return hmac.new(self._secret, b"shoal/" + self.swarm.encode() + b"/" + label,
                        hashlib.sha256).digest()

    def key(self, label: str) -> bytes:
        """The 160-bit DHT key of `label` (e.g. ``node/<id>``) in this swarm."""
        return self._derive(b"key/" + label.encode())[:KEY_BYTES]

    def node_key(self, node_id: str) -> bytes:
        return self.key(f"node/{node_id}")

    def verdict_key(self, node_id: str) -> bytes:
        return self.key(f"verdicts/{node_id}")

    def seal(self, dht_key: bytes, plain: bytes) -> bytes:
        """`plain` encrypted and authenticated for `dht_key` (nonce || ciphertext || tag)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, dht_key)

    def open(self, dht_key: bytes, sealed: object) -> bytes:
        """The plaintext of a value sealed for `dht_key`; raises `InviteError` for anything not
        sealed with this swarm's key for exactly that DHT key."""
        from cryptography.exceptions import InvalidTag

        if not isinstance(sealed, bytes) or len(sealed) < NONCE_BYTES + 16:
            raise InviteError("the value is not sealed")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], dht_key)
        except InvalidTag:
            raise InviteError("the value is not sealed with this swarm's key") from None
