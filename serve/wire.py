"""The wire format between gateway and nodes: versioned msgpack headers plus raw tensor bytes.

One frame is one websocket binary message:

    u32 little-endian header length | msgpack header (a tagged struct below) | tensor bytes

Tensors never go through JSON or msgpack: the header says dtype and shape and the payload is the
tensor's raw little-endian bytes. Activations may travel as bf16/fp16 (`wire_dtype`) and are
widened to float32 on arrival. `PROTOCOL` is bumped on any incompatible change; a frame of another
version is refused, never misparsed.

The protocol authenticates every frame that matters (docs/threat-model.md): the gateway signs a
`Ticket` (a session's route) once and tags an `Order` per traversal for every hop; each hop signs
a `Receipt` binding its input and output digests and tags it for the gateway and the next hop
(session keys, `serve/auth.py`); errors, closes, challenges and audits are signed by their
senders.
This module only defines the shapes and the bytes that get signed; who checks what lives in
`serve/node.py` and `serve/gateway/pipeline.py`.

Why websockets: one persistent, ordered, bidirectional connection per hop with message framing
built in, no code generation, and a plain TCP stream that the latency relay can delay chunk by chunk.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Union

import msgspec
import torch

from serve.exceptions import WireError

PROTOCOL = 3
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_ROUTE = 64
"""Most hops a route may have."""
MAX_CHALLENGE_CHUNKS = 256
"""Most chunks one challenge may open."""
MAX_DIMS = 4
"""Most dimensions a tensor on the wire may have."""


class Hop(msgspec.Struct, frozen=True):
    """One node of a route, the layers it runs for this request, and the key it answers with."""

    node_id: str
    url: str
    start: int
    end: int
    public_key: str = ""


class Ticket(msgspec.Struct, frozen=True):
    """The route of one session, signed once by the gateway (carried as bytes in `Forward`)."""

    session: str
    route: list[Hop]
    reply_to: str
    """Where the last hop sends its `Result` (the gateway's return endpoint)."""
    gateway_key: str
    """Hex Ed25519 public key of the gateway: it signs this ticket, every order and close."""
    version: str = ""
    """The model version the session runs on ("" = whatever the node serves by default)."""
    wire_dtype: str = "float32"
    issued_at: float = 0.0


class Order(msgspec.Struct, frozen=True):
    """One traversal, signed by the gateway (carried as bytes in `Forward`).

    `keep` is the number of cached positions the session must keep before appending `count` new
    ones: a node truncates its cache to `keep` first (rejected speculative tokens are dropped this
    way, never by a round trip of their own)."""

    request_id: str
    ticket_digest: bytes
    keep: int
    count: int
    input_digest: bytes
    """`tensor_digest` of the first hop's input."""
    issued_at: float


class Receipt(msgspec.Struct, frozen=True):
    """What one hop computed for one order, signed by that hop (`receipt_bytes`)."""

    node_id: str
    request_id: str
    order_digest: bytes
    hop: int
    keep: int
    count: int
    input_digest: bytes
    output_digest: bytes
    version: str
    signature: bytes = b""
    """Ed25519 by the hop over `receipt_bytes`: evidence anyone can check."""
    mac: bytes = b""
    """Tag with the hop's session key with the gateway (checked on every traversal)."""
    link: bytes = b""
    """Tag with the session key shared with the next hop ("" from the last hop)."""


class Forward(msgspec.Struct, tag="forward", frozen=True):
    """Run the tensor (`count` new positions) through hop `hop`'s layers, then pass it on with a
    receipt; the last hop sends a `Result` to the ticket's `reply_to`."""

    ticket: bytes
    ticket_sig: bytes
    order: bytes
    order_tags: list[bytes]
    """One tag per hop of the route, each with that hop's session key with the gateway."""
    hop: int
    receipts: list[Receipt] = []
    """One per hop before this one, in order."""
    wire_dtype: str = "float32"
    """How the tensor travels (must equal the ticket's)."""
    v: int = PROTOCOL


class Result(msgspec.Struct, tag="result", frozen=True):
    """The last hop's answer. `sender` tags that it answers as the last hop (`result_bytes`):
    a hop that answers for the rest of the chain tags its own eviction."""

    request_id: str
    receipts: list[Receipt]
    """One per hop of the route; the last one's output digest is the tensor's."""
    order_digest: bytes = b""
    """Digest of the order the sender computed for (a result for another order is dropped)."""
    sender: str = ""
    """Public key of the node that sends this result."""
    tag: bytes = b""
    """Tag with the sender's session key with the gateway."""
    wire_dtype: str = "float32"
    v: int = PROTOCOL


class Error(msgspec.Struct, tag="error", frozen=True):
    """A failed hop, signed by the node that reports it. `node_id` names the node at fault (the
    reporter itself, or a next hop it could not reach)."""

    request_id: str
    code: str
    message: str
    node_id: str
    about: bytes = b""
    """What the error answers: the digest of the order (traversals) or of the frame's header
    (`header_digest`, direct requests). An error about anything else counts for nothing."""
    reporter: str = ""
    """Public key of the node that sends this error ("" when it could not sign)."""
    signature: bytes = b""
    v: int = PROTOCOL


class Close(msgspec.Struct, tag="close", frozen=True):
    """Drop a session's cache; signed by the gateway that owns the session."""

    session: str
    gateway_key: str
    signature: bytes
    v: int = PROTOCOL


class Ping(msgspec.Struct, tag="ping", frozen=True):
    request_id: str
    v: int = PROTOCOL


class Pong(msgspec.Struct, tag="pong", frozen=True):
    request_id: str
    node_id: str
    stats: dict
    """The node's signed record (`serve.records.sign_record`)."""
    v: int = PROTOCOL


class Challenge(msgspec.Struct, tag="challenge", frozen=True):
    """Open `count` chunks of the weights you compute with, chosen by `nonce` (live-weight proof);
    signed by the gateway that asks."""

    request_id: str
    nonce: bytes
    node_id: str
    """The node the verifier believes it is talking to; the selection depends on it."""
    count: int
    version: str = ""
    """Prove the weights of this version ("" = the node's current one)."""
    gateway_key: str = ""
    signature: bytes = b""
    v: int = PROTOCOL


class ProofItem(msgspec.Struct, frozen=True):
    tensor: str
    index: int
    chunk: bytes
    path: list[bytes]


class Proof(msgspec.Struct, tag="proof", frozen=True):
    request_id: str
    node_id: str
    nonce: bytes
    items: list[ProofItem]
    signature: str
    """Hex Ed25519 signature by the node key over `serve.proofs.proof_digest`."""
    v: int = PROTOCOL


class Audit(msgspec.Struct, tag="audit", frozen=True):
    """Send back the input and output of forward `forward_id` (a spot check); signed by the
    gateway that ordered it. `request_id` is this audit's own id, echoed in the reply."""

    request_id: str
    forward_id: str
    gateway_key: str
    signature: bytes
    v: int = PROTOCOL


class AuditReply(msgspec.Struct, tag="audit-reply", frozen=True):
    """The activations a receipt committed to, as one [2, T, H] tensor (input, output)."""

    request_id: str
    receipt: Receipt
    wire_dtype: str = "float32"
    v: int = PROTOCOL


Message = Union[Forward, Result, Error, Close, Ping, Pong, Challenge, Proof, Audit, AuditReply]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_ticket_decoder = msgspec.msgpack.Decoder(Ticket)
_order_decoder = msgspec.msgpack.Decoder(Order)


def pack(struct: msgspec.Struct) -> bytes:
    """The msgpack bytes of a ticket or order (what the gateway signs)."""
    return _encoder.encode(struct)


def unpack_ticket(data: bytes) -> Ticket:
    try:
        return _ticket_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(f"undecodable ticket: {exc}") from None


def unpack_order(data: bytes) -> Order:
    try:
        return _order_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(f"undecodable order: {exc}") from None


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def tensor_digest(tensor: torch.Tensor, wire_dtype: str = "float32") -> bytes:
    """SHA-256 of a tensor's shape and bytes as they travel in `wire_dtype`. The receiver of a
    frame gets the same digest from the float32 tensor it decoded (widening is exact)."""
    t = tensor.detach().to(WIRE_DTYPES[wire_dtype]).contiguous()
    h = hashlib.sha256(struct.pack(f"<B{t.dim()}I", t.dim(), *t.shape))
    if t.numel():
        h.update(t.view(torch.uint8).numpy())
    return h.digest()


def receipt_bytes(r: Receipt) -> bytes:
    """What a hop signs: every field of its receipt but the signature."""
    return b"shoal-receipt\0" + _encoder.encode(
        [r.node_id, r.request_id, r.order_digest, r.hop, r.keep, r.count, r.input_digest,
         r.output_digest, r.version])


def result_bytes(request_id: str, receipts: list[Receipt], order_digest: bytes,
                 sender: str) -> bytes:
    return b"shoal-result\0" + _encoder.encode([request_id, [r.mac for r in receipts],
                                                 order_digest, sender])


def error_bytes(e: Error) -> bytes:
    return b"shoal-error\0" + _encoder.encode([e.request_id, e.code, e.message, e.node_id,
                                                e.about, e.reporter])


def header_digest(message: "Message") -> bytes:
    """Digest of a frame's header as encoded (what an error about a direct request names)."""
    return digest(_encoder.encode(message))


def close_bytes(session: str) -> bytes:
    return b"shoal-close\0" + session.encode()


def challenge_bytes(c: Challenge) -> bytes:
    return b"shoal-challenge\0" + _encoder.encode([c.request_id, c.nonce, c.node_id, c.count,
                                                    c.version, c.gateway_key])


def audit_bytes(a: Audit) -> bytes:
    return b"shoal-audit\0" + _encoder.encode([a.request_id, a.forward_id, a.gateway_key])


def ticket_bytes(data: bytes) -> bytes:
    return b"shoal-ticket\0" + data


def order_bytes(data: bytes) -> bytes:
    return b"shoal-order\0" + data


def encode(message: Message, tensor: torch.Tensor | None = None, wire_dtype: str = "float32") -> bytes:
    header = _encoder.encode(message)
    if tensor is None:
        return struct.pack("<I", len(header)) + header
    t = tensor.detach().to(WIRE_DTYPES[wire_dtype]).contiguous()
    shape = struct.pack("<B", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape)
    payload = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return struct.pack("<I", len(header)) + header + shape + payload


def decode(frame: bytes, wire_dtype: str = "float32") -> tuple[Message, torch.Tensor | None]:
    """Split a frame into its header and (float32) tensor."""
    if len(frame) < 4:
        raise WireError(f"frame of {len(frame)} bytes is too short")
    (hlen,) = struct.unpack_from("<I", frame)
    if 4 + hlen > len(frame):
        raise WireError(f"header length {hlen} runs past the {len(frame)}-byte frame")
    try:
        message = _decoder.decode(frame[4:4 + hlen])
    except msgspec.DecodeError as exc:
        raise WireError(f"undecodable header: {exc}") from None
    if message.v != PROTOCOL:
        raise WireError(f"protocol version {message.v}, this peer speaks {PROTOCOL}")
    rest = memoryview(frame)[4 + hlen:]
    if not len(rest):
        return message, None
    ndim = rest[0]
    if not 1 <= ndim <= MAX_DIMS or len(rest) < 1 + 4 * ndim:
        raise WireError(f"tensor of {ndim} dimensions is not accepted")
    dims = struct.unpack_from(f"<{ndim}I", rest, 1)
    body = rest[1 + 4 * ndim:]
    wire_dtype = getattr(message, "wire_dtype", wire_dtype)
    if wire_dtype not in WIRE_DTYPES:
        raise WireError(f"wire dtype {wire_dtype!r} is not one of {', '.join(WIRE_DTYPES)}")
    dtype = WIRE_DTYPES[wire_dtype]
    expected = dtype.itemsize
    for d in dims:
        expected *= d
    if len(body) != expected:
        raise WireError(f"tensor payload is {len(body)} bytes, shape {dims} needs {expected}")
    tensor = torch.frombuffer(bytearray(body), dtype=torch.uint8).view(dtype).reshape(dims)
    return message, tensor.to(torch.float32)
