"""The channel between hosts: websockets over TLS 1.3, pinned to the peer's identity key.

Every hop frame is already authenticated end to end (serve/auth.py: signatures and session tags),
but on plain ``ws://`` anyone on the path reads hidden states, prompts' embeddings and routes.
Between hosts the swarm therefore speaks ``wss://``: each node (and each gateway's return port)
presents a self-signed X.509 certificate whose subject key *is* its Ed25519 identity key, and the
dialer accepts the connection only if that key is the one it already trusts for the peer: the
``public_key`` of the signed node record or route hop, or the ``gateway_key`` of the signed ticket
for a reply. There is no CA and no trust on first use; the pin comes from what is signed.

TLS itself is done by Python's `ssl` (OpenSSL) under `websockets`, not by shoal: the handshake,
key exchange, record encryption and replay protection are the parts a maintained, audited library
must own. OpenSSL checks the TLS 1.3 CertificateVerify against the certificate's key even when
chain validation is off, so a server that presents someone else's certificate without the private
key fails the handshake, and one that presents its own key fails the pin here.

Loopback stays ``ws://`` by default (nothing crosses a wire); `TlsMode` forces either way. A
dialer refuses ``ws://`` to a non-loopback address unless plain transport was asked for.

It knows nothing about frames, sessions or models.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import os
import socket
import ssl
import tempfile
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from registry.signing import SigningKey
from serve.config import TlsMode
from serve.exceptions import TransportRefused

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
CERT_DAYS = 3650
"""Validity written into the certificate. Nobody checks it: the pin is the key, and a key is
replaced by a new identity, not by a renewed certificate."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address) stays on this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_enabled(mode: TlsMode, host: str) -> bool:
    """Whether a listener bound to `host` speaks TLS under `mode`."""
    if mode == "auto":
        return not is_loopback(host)
    return mode == "on"


def advertised_url(host: str, port: int, advertise: str | None, tls: bool) -> str:
    """The address peers dial: `advertise` as given if it is a URL, else ``scheme://ADVERTISE:
    port`` (ADVERTISE may carry its own port); without it the bind address, which must then be
    one a peer can dial (not a wildcard)."""
    scheme = "wss" if tls else "ws"
    if advertise and "://" in advertise:
        return advertise
    target = advertise or host
    if target in WILDCARDS:
        raise ValueError(f"bound to {host or '*'!r}: give --advertise HOST, the address other "
                         "hosts reach this one at")
    if ":" in target and not target.startswith("[") and target.count(":") == 1:
        return f"{scheme}://{target}"  # host:port
    if ":" in target and not target.startswith("["):
        target = f"[{target}]"  # a bare IPv6 address
    return f"{scheme}://{target}:{port}"


def advertised_host(advertise: str | None) -> str | None:
    """Only the host of an `--advertise` value (a URL, ``HOST:PORT`` or ``HOST``): what a second
    listener of the same process, on a port of its own, advertises."""
    if not advertise:
        return None
    if "://" in advertise:
        host = urlsplit(advertise).hostname
        return f"[{host}]" if host and ":" in host else host
    if advertise.startswith("["):
        return advertise.split("]", 1)[0] + "]"
    return advertise.rsplit(":", 1)[0] if advertise.count(":") == 1 else advertise


def certificate(key: SigningKey) -> bytes:
    """A self-signed certificate (PEM) for `key`: subject and issuer name the key's hex, and the
    subject public key is the identity key itself (what dialers pin)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key.public_hex[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .sign(key.private, None))  # Ed25519 signs without a separate hash
    return cert.public_bytes(serialization.Encoding.PEM)


def server_context(key: SigningKey) -> ssl.SSLContext:
    """TLS 1.3 only, presenting `key`'s certificate. OpenSSL loads keys from files only: they are
    written to a private temporary directory and removed at once."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    pem = key.private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    with tempfile.TemporaryDirectory(prefix="shoal-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as fh:
            fh.write(certificate(key))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


@functools.lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """TLS 1.3 only; no chain or host-name check (there is no CA): `check_peer` pins the key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_public_key(ssl_object: ssl.SSLObject) -> str:
    """The Ed25519 key (hex) of the certificate the peer presented; raises `TransportRefused`
    for none or another key type."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise TransportRefused("tls-certificate", "the peer presented no certificate")
    public = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise TransportRefused("tls-certificate", "the peer's certificate key is not Ed25519")
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def check_peer(conn: object, url: str, expected_key: str) -> None:
    """Refuse a TLS connection whose certificate key is not `expected_key` (or whose certificate
    cannot be read at all: whatever fails here is a refusal)."""
    ssl_object = conn.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        raise TransportRefused("tls", f"{url}: the connection is not encrypted")
    try:
        got = peer_public_key(ssl_object)
    except TransportRefused:
        raise
    except Exception as exc:  # a certificate OpenSSL took but `cryptography` cannot read
        raise TransportRefused("tls-certificate", f"{url}: unreadable certificate "
                               f"({type(exc).__name__})") from None
    if got != expected_key.lower():
        raise TransportRefused("tls-pin", f"{url} presented key {got[:16]}…, not the "
                               f"expected {expected_key[:16]}…")


def check_dial(url: str, expected_key: str | None, allow_plain: bool) -> None:
    """What may be dialled at all: ``wss://`` only with a key to pin; ``ws://`` only on loopback
    unless `allow_plain`."""
    parts = urlsplit(url)
    if parts.scheme == "wss":
        if not expected_key:
            raise TransportRefused("tls-pin", f"{url}: no key to pin the peer to")
    elif parts.scheme == "ws":
        if not allow_plain and not is_loopback(parts.hostname or ""):
            raise TransportRefused("plain", f"{url}: refusing unencrypted ws:// off loopback "
                                   "(the peer should advertise wss://)")
    else:
        raise TransportRefused("scheme", f"{url}: expected ws:// or wss://")


async def _relayed_socket(host: str, port: int, node_id: str) -> socket.socket:
    """A TCP connection to a NAT relay that has asked it for `node_id` (serve/nat_relay.py);
    the TLS handshake with the node itself then runs over it."""
    loop = asyncio.get_running_loop()
    family, kind, proto, _, address = (await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, f"SHOAL-DIAL {node_id}\n".encode())
    except BaseException:
        sock.close()
        raise
    return sock


async def dial(url: str, expected_key: str | None, *, allow_plain: bool = False,
               **options: object) -> object:
    """A websockets client connection to `url`, encrypted and pinned for ``wss://``; a
    ``wss://RELAY/via/<node id>`` URL is dialled through that NAT relay, TLS end to end."""
    from websockets.asyncio.client import connect

    from serve.nat_relay import via_target
    from serve.records import node_id_of

    check_dial(url, expected_key, allow_plain)
    tls = url.startswith("wss://")
    parts = urlsplit(url)
    relayed = via_target(parts.path)
    if relayed is not None:
        if not tls or node_id_of(expected_key or "") != relayed:
            raise TransportRefused("relay", f"{url}: a relayed node is dialled with wss:// and "
                                   "the key of the id it names")
        options["sock"] = await _relayed_socket(parts.hostname or "", parts.port or 443,
                                                relayed)
    conn = await connect(url, ssl=client_context() if tls else None, **options)
    if tls:
        try:
            check_peer(conn, url, expected_key or "")
        except BaseException:  # refused (or cancelled meanwhile): never left open
            await conn.close()
            raise
    return conn
