"""The wire format between gateway and nodes: versioned msgpack headers plus raw tensor bytes.

One frame is one websocket binary message:

    u32 little-endian header length | msgpack header (a tagged struct below) | tensor bytes

Tensors never go through JSON or msgpack: the header says dtype and shape and the payload is the
tensor's raw little-endian bytes. Activations may travel as bf16/fp16 (`wire_dtype`) and are
widened to float32 on arrival. `PROTOCOL` is bumped on any incompatible change; a peer speaking
another version gets an `Error` frame, never a misparse.

Why websockets: one persistent, ordered, bidirectional connection per hop with message framing
built in, no code generation, and a plain TCP stream that the latency relay can delay chunk by chunk.
"""

from __future__ import annotations

import struct
from typing import Union

import msgspec
import torch

from serve.exceptions import WireError

PROTOCOL = 1
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Hop(msgspec.Struct, frozen=True):
    """One node of a route and the layers it runs for this request."""

    node_id: str
    url: str
    start: int
    end: int


class Forward(msgspec.Struct, tag="forward", frozen=True):
    """Run `hidden` (T new positions) through this hop's layers, then pass it on.

    `keep` is the number of cached positions the session must keep before appending: a node
    truncates its cache to `keep` first (rejected speculative tokens are dropped this way, never
    by a round trip of their own). The last hop sends a `Result` to `reply_to`.
    """

    request_id: str
    session: str
    route: list[Hop]
    hop: int
    keep: int
    reply_to: str
    wire_dtype: str = "float32"
    version: str = ""
    """The model version the session runs on ("" = whatever the node serves by default)."""
    v: int = PROTOCOL


class Result(msgspec.Struct, tag="result", frozen=True):
    request_id: str
    session: str
    node_id: str
    wire_dtype: str = "float32"
    v: int = PROTOCOL


class Error(msgspec.Struct, tag="error", frozen=True):
    """A failed hop. `node_id` names the node that is at fault (itself, or an unreachable next)."""

    request_id: str
    code: str
    message: str
    node_id: str
    v: int = PROTOCOL


class Close(msgspec.Struct, tag="close", frozen=True):
    session: str
    v: int = PROTOCOL


class Ping(msgspec.Struct, tag="ping", frozen=True):
    request_id: str
    v: int = PROTOCOL


class Pong(msgspec.Struct, tag="pong", frozen=True):
    request_id: str
    node_id: str
    stats: dict
    v: int = PROTOCOL


class Challenge(msgspec.Struct, tag="challenge", frozen=True):
    """Open `count` chunks of the weights you compute with, chosen by `nonce` (live-weight proof)."""

    request_id: str
    nonce: bytes
    node_id: str
    """The node the verifier believes it is talking to; the selection depends on it."""
    count: int
    version: str = ""
    """Prove the weights of this version ("" = the node's current one)."""
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


Message = Union[Forward, Result, Error, Close, Ping, Pong, Challenge, Proof]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


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
    dims = struct.unpack_from(f"<{ndim}I", rest, 1)
    body = rest[1 + 4 * ndim:]
    dtype = WIRE_DTYPES.get(getattr(message, "wire_dtype", wire_dtype), torch.float32)
    expected = dtype.itemsize
    for d in dims:
        expected *= d
    if len(body) != expected:
        raise WireError(f"tensor payload is {len(body)} bytes, shape {dims} needs {expected}")
    tensor = torch.frombuffer(bytearray(body), dtype=torch.uint8).view(dtype).reshape(dims)
    return message, tensor.to(torch.float32)
