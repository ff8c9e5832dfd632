"""Signing and checking the authenticated parts of the swarm protocol (docs/threat-model.md).

The gateway signs tickets (a session's route), closes, challenges and audits; each hop signs a
receipt of what it computed and nodes sign their errors. Both sides use the functions here, so a
frame is checked the same way wherever it arrives. Every check fails closed: anything malformed,
unsigned or mis-signed raises `FrameRejected` naming the check, and callers answer with a typed
error instead of crashing.

The per-token hot path uses no public-key operation. A ticket, verified once per session, fixes
the route; from it every pair that talks on the hot path derives a session key by X25519 between
its two Ed25519 identities (converted with libsodium, as `crypto_sign_ed25519_*_to_curve25519`
documents) and HKDF over the ticket digest:

- gateway <-> hop i: the gateway tags each order for every hop, and hop i tags its receipt (and,
  from the last hop, the result) for the gateway;
- hop i-1 -> hop i: the link tag on hop i-1's receipt, so hop i computes only on what its
  predecessor sent.

Only the two ends of a pair know its key, so no other hop or outsider can forge a tag. Tags prove
nothing to a third party, so receipts stay signed as well: a signature is what makes a receipt
evidence in a spot check (`check_receipt_signature`), and nobody verifies it per token.

It knows nothing about sessions, caches or sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import msgspec
import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from registry.signing import SigningKey
from serve import wire
from serve.exceptions import FrameRejected
from serve.records import node_id_of

ORDER_WINDOW_S = 60.0
"""An order issued longer ago than this (or this far in the future) is refused."""
TICKET_MAX_AGE_S = 6 * 3600.0
"""A session's route is signed anew after this long (a long-lived session re-prefills)."""


@lru_cache(maxsize=4096)
def _public(public_hex: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))


def verify(public_hex: str, signature: bytes, data: bytes) -> bool:
    """True only for a valid Ed25519 signature by `public_hex` over `data`."""
    try:
        _public(public_hex).verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def sign(key: SigningKey, data: bytes) -> bytes:
    return key.private.sign(data)


# session keys (the hot path's tags) ------------------------------------------------------------

TAG_BYTES = 16


def tag(key: bytes, data: bytes) -> bytes:
    """A 128-bit keyed BLAKE2b tag (RFC 7693's MAC mode) of `data`."""
    return hashlib.blake2b(data, key=key, digest_size=TAG_BYTES).digest()


def tag_ok(key: bytes | None, data: bytes, got: bytes) -> bool:
    return key is not None and hmac.compare_digest(tag(key, data), got)


@lru_cache(maxsize=4096)
def _curve_public(public_hex: str) -> bytes:
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(bytes.fromhex(public_hex))


_SHARED: OrderedDict[tuple[str, str], bytes] = OrderedDict()


def _shared(key: SigningKey, peer_hex: str) -> bytes:
    """X25519 between `key` and the peer's identity (cached: one per pair of keys)."""
    pair = (key.public_hex, peer_hex)
    secret = _SHARED.get(pair)
    if secret is None:
        try:
            seed = key.private.private_bytes(serialization.Encoding.Raw,
                                             serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
            mine = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
                seed + bytes.fromhex(key.public_hex))
            secret = nacl.bindings.crypto_scalarmult(mine, _curve_public(peer_hex))
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise FrameRejected("session-key", f"no session key with {peer_hex[:16]}: "
                                f"{type(exc).__name__}") from None
        _SHARED[pair] = secret
        while len(_SHARED) > 8192:
            _SHARED.popitem(last=False)
    return secret


def _session_key(key: SigningKey, peer_hex: str, ticket_data: bytes, label: bytes,
                 hop: int) -> bytes:
    return HKDF(hashes.SHA256(), 32, wire.digest(ticket_data),
                b"shoal-session\0" + label + hop.to_bytes(2, "big")).derive(_shared(key, peer_hex))


def gateway_keys(key: SigningKey, ticket_data: bytes, route: list[wire.Hop]) -> list[bytes]:
    """The gateway's session key with each hop of a ticket's route (`FrameRejected.hop` names a
    hop whose key admits no key exchange)."""
    keys = []
    for i, hop in enumerate(route):
        try:
            keys.append(_session_key(key, hop.public_key, ticket_data, b"gateway", i))
        except FrameRejected as exc:
            exc.hop = i
            raise
    return keys


@dataclass(frozen=True)
class HopKeys:
    """A hop's session keys: with the gateway, and with its neighbours on the route."""

    gateway: bytes
    previous: bytes | None
    """Shared with hop i-1 (None at the first hop: its input is bound by the order)."""
    next: bytes | None
    """Shared with hop i+1 (None at the last hop)."""


def hop_keys(key: SigningKey, ticket_data: bytes, ticket: wire.Ticket, hop: int) -> HopKeys:
    route = ticket.route
    return HopKeys(
        _session_key(key, ticket.gateway_key, ticket_data, b"gateway", hop),
        _session_key(key, route[hop - 1].public_key, ticket_data, b"link", hop) if hop else None,
        _session_key(key, route[hop + 1].public_key, ticket_data, b"link", hop + 1)
        if hop + 1 < len(route) else None)


# tickets and orders (gateway -> every hop) ----------------------------------------------------

def make_ticket(key: SigningKey, session: str, route: list[wire.Hop], reply_to: str,
                version: str, wire_dtype: str) -> tuple[bytes, bytes]:
    data = wire.pack(wire.Ticket(session, route, reply_to, key.public_hex, version, wire_dtype,
                                 time.time()))
    return data, sign(key, wire.ticket_bytes(data))


def open_ticket(data: bytes, signature: bytes) -> wire.Ticket:
    """Decode and check a ticket: signed by the key it names, a well-formed route."""
    ticket = wire.unpack_ticket(data)
    if not verify(ticket.gateway_key, signature, wire.ticket_bytes(data)):
        raise FrameRejected("ticket-signature", "the ticket is not signed by its gateway key")
    route = ticket.route
    if not 1 <= len(route) <= wire.MAX_ROUTE:
        raise FrameRejected("route", f"a route has 1 to {wire.MAX_ROUTE} hops, not {len(route)}")
    for i, hop in enumerate(route):
        if not 0 <= hop.start < hop.end:
            raise FrameRejected("route", f"hop {i} has the empty span {hop.start}:{hop.end}")
        if i and route[i - 1].end != hop.start:
            raise FrameRejected("route", f"hop {i} starts at layer {hop.start}, not where hop "
                                f"{i - 1} ends ({route[i - 1].end})")
        if not hop.public_key or node_id_of(hop.public_key) != hop.node_id:
            raise FrameRejected("route", f"hop {i}: id {hop.node_id} is not the hash of its key")
    if ticket.wire_dtype not in wire.WIRE_DTYPES:
        raise FrameRejected("route", f"wire dtype {ticket.wire_dtype!r} is not supported")
    if not -60.0 < time.time() - ticket.issued_at < TICKET_MAX_AGE_S:
        raise FrameRejected("ticket-stale", "the ticket is too old or from the future")
    return ticket


def make_order(keys: list[bytes], ticket_data: bytes, request_id: str, keep: int, count: int,
               input_digest: bytes) -> tuple[bytes, list[bytes]]:
    """An order and its tags, one per hop (`gateway_keys`)."""
    data = wire.pack(wire.Order(request_id, wire.digest(ticket_data), keep, count, input_digest,
                                time.time()))
    return data, [tag(k, wire.order_bytes(data)) for k in keys]


def open_order(data: bytes, order_tag: bytes, key: bytes, ticket_data: bytes,
               now: float | None = None) -> wire.Order:
    """Decode and check an order: tagged for this hop by the ticket's gateway, for this ticket,
    fresh. Every hop checks its own tag: a previous hop must not be able to make a later one
    truncate or overwrite its cache with an order of its own."""
    order = wire.unpack_order(data)
    if not tag_ok(key, wire.order_bytes(data), order_tag):
        raise FrameRejected("order-tag", "the order is not tagged by the ticket's gateway")
    if order.ticket_digest != wire.digest(ticket_data):
        raise FrameRejected("order", "the order is for another ticket")
    now = time.time() if now is None else now
    if abs(now - order.issued_at) > ORDER_WINDOW_S:
        raise FrameRejected("order-stale", f"the order was issued {now - order.issued_at:.0f} s "
                            "from now")
    if order.keep < 0 or order.count < 1:
        raise FrameRejected("order", f"keep {order.keep}, count {order.count}")
    return order


# receipts (each hop) ---------------------------------------------------------------------------

def make_receipt(key: SigningKey, keys: HopKeys, node_id: str, order: wire.Order,
                 order_data: bytes, hop: int, input_digest: bytes, output_digest: bytes,
                 version: str) -> wire.Receipt:
    """Signed (evidence), tagged for the gateway and for the next hop (the hot path). The
    gateway's tag covers the signature too, so a later hop that relays the receipt cannot spoil
    the signature unseen and have this hop fail its spot check."""
    unsigned = wire.Receipt(node_id, order.request_id, wire.digest(order_data), hop, order.keep,
                            order.count, input_digest, output_digest, version)
    data = wire.receipt_bytes(unsigned)
    signature = sign(key, data)
    return msgspec.structs.replace(unsigned, signature=signature,
                                   mac=tag(keys.gateway, data + signature),
                                   link=tag(keys.next, data) if keys.next else b"")


def _receipt_fields(receipt: wire.Receipt, hop: wire.Hop, index: int, order: wire.Order,
                    order_digest: bytes) -> None:
    if receipt.node_id != hop.node_id or receipt.hop != index:
        raise FrameRejected("receipt", f"receipt {index} is by {receipt.node_id} for hop "
                            f"{receipt.hop}, not by {hop.node_id} for hop {index}")
    if (receipt.request_id, receipt.order_digest, receipt.keep, receipt.count) != (
            order.request_id, order_digest, order.keep, order.count):
        raise FrameRejected("receipt", f"receipt {index} is for another order")


def check_link(receipt: wire.Receipt, hop: wire.Hop, index: int, order: wire.Order,
               order_digest: bytes, key: bytes | None) -> None:
    """At hop index+1: the previous hop's receipt for `order`, tagged with our link key."""
    _receipt_fields(receipt, hop, index, order, order_digest)
    if not tag_ok(key, wire.receipt_bytes(receipt), receipt.link):
        raise FrameRejected("receipt-tag", f"receipt {index} is not from {hop.node_id}")


def check_receipt_signature(receipt: wire.Receipt, hop: wire.Hop) -> bool:
    """Whether `receipt` is signed by `hop` (what makes it evidence to anyone)."""
    return verify(hop.public_key, receipt.signature, wire.receipt_bytes(receipt))


def same_receipt(a: wire.Receipt, b: wire.Receipt) -> bool:
    """Whether two copies are one receipt: same content, signature and gateway tag. The link tag
    is left out: it was for the next hop only, and any later hop could have changed it."""
    return (wire.receipt_bytes(a), a.signature, a.mac) == (wire.receipt_bytes(b), b.signature,
                                                           b.mac)


def check_chain(receipts: list[wire.Receipt], route: list[wire.Hop], keys: list[bytes],
                order: wire.Order, order_digest: bytes, output_digest: bytes) -> None:
    """The full chain at the gateway: one valid receipt per hop, each hop's input digest equal
    to the previous output digest (the first to the order's), the last output the tensor
    received. `FrameRejected.hop` names the first hop whose receipt breaks the chain."""
    if len(receipts) != len(route):
        raise FrameRejected("receipt-chain", f"{len(receipts)} receipts for {len(route)} hops",
                            hop=min(len(receipts), len(route) - 1))
    expected = order.input_digest
    for i, (receipt, hop) in enumerate(zip(receipts, route)):
        try:
            _receipt_fields(receipt, hop, i, order, order_digest)
        except FrameRejected as exc:
            exc.hop = i
            raise
        if not tag_ok(keys[i], wire.receipt_bytes(receipt) + receipt.signature, receipt.mac):
            raise FrameRejected("receipt-tag", f"receipt {i} is not from {hop.node_id}",
                                hop=i)
        if receipt.input_digest != expected:
            raise FrameRejected("receipt-chain", f"hop {i} computed on an input that hop "
                                f"{i - 1} did not output" if i else
                                "hop 0 computed on an input the gateway did not send", hop=i)
        expected = receipt.output_digest
    if expected != output_digest:
        raise FrameRejected("receipt-chain", "the result is not what the last hop signed",
                            hop=len(route) - 1)


def make_result(key: SigningKey, gateway_key: bytes, request_id: str,
                receipts: list[wire.Receipt], order_digest: bytes, wire_dtype: str) -> wire.Result:
    """A result tagged for the gateway with the sender's session key."""
    data = wire.result_bytes(request_id, receipts, order_digest, key.public_hex)
    return wire.Result(request_id, receipts, order_digest, key.public_hex,
                       tag(gateway_key, data), wire_dtype)


def result_sender(result: wire.Result, route: list[wire.Hop], keys: list[bytes]) -> int | None:
    """The index in `route` of the node that tagged `result`, or None (tagged by no one there)."""
    data = wire.result_bytes(result.request_id, result.receipts, result.order_digest,
                             result.sender)
    for i, hop in enumerate(route):
        if hop.public_key == result.sender:
            return i if tag_ok(keys[i], data, result.tag) else None
    return None


# node errors, closes, challenges, audits ------------------------------------------------------

def sign_error(key: SigningKey, request_id: str, code: str, message: str, node_id: str,
               about: bytes = b"") -> wire.Error:
    unsigned = wire.Error(request_id, code, message[:500], node_id, about, key.public_hex)
    return msgspec.structs.replace(unsigned, signature=sign(key, wire.error_bytes(unsigned)))


def error_from(error: wire.Error, route: list[wire.Hop], about: bytes) -> bool:
    """Whether `error` is signed by a node of `route` and answers exactly `about` (errors from
    anyone else, or provoked by someone else's frame, are ignored)."""
    keys = {h.public_key for h in route}
    return (error.reporter in keys and error.about == about
            and verify(error.reporter, error.signature, wire.error_bytes(error)))


def blame(error: wire.Error, route: list[wire.Hop]) -> tuple[str, str | None]:
    """(node to blame, reporter when that is another node) for an `error` that `error_from`
    accepted. A hop may name itself, or, with ``next-hop-failed``, the hop right after it on
    this route; any other node it names is not believed, and the reporter is blamed instead
    (otherwise one hop could get any node of the swarm excluded, one session at a time)."""
    positions = [i for i, hop in enumerate(route) if hop.public_key == error.reporter]
    for i in positions:
        if error.node_id == route[i].node_id:
            return route[i].node_id, None
        if (error.code == "next-hop-failed" and i + 1 < len(route)
                and route[i + 1].node_id == error.node_id):
            return error.node_id, route[i].node_id
    return route[positions[0]].node_id, None


def sign_close(key: SigningKey, session: str) -> wire.Close:
    return wire.Close(session, key.public_hex, sign(key, wire.close_bytes(session)))


def sign_challenge(key: SigningKey, request_id: str, nonce: bytes, node_id: str, count: int,
                   version: str) -> wire.Challenge:
    unsigned = wire.Challenge(request_id, nonce, node_id, count, version, key.public_hex)
    return msgspec.structs.replace(unsigned, signature=sign(key, wire.challenge_bytes(unsigned)))


def check_challenge(c: wire.Challenge) -> None:
    if not 1 <= c.count <= wire.MAX_CHALLENGE_CHUNKS:
        raise FrameRejected("challenge", f"count {c.count} is outside 1..."
                            f"{wire.MAX_CHALLENGE_CHUNKS}")
    if not verify(c.gateway_key, c.signature, wire.challenge_bytes(c)):
        raise FrameRejected("challenge-signature", "the challenge is not signed by its key")


def sign_audit(key: SigningKey, forward_id: str) -> wire.Audit:
    unsigned = wire.Audit(uuid.uuid4().hex, forward_id, key.public_hex, b"")
    return msgspec.structs.replace(unsigned, signature=sign(key, wire.audit_bytes(unsigned)))
