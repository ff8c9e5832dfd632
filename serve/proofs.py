"""Live-weight proofs: show that the bytes a node computes with are the release's bytes.

A verifier sends a fresh random nonce. The nonce and the node's id choose, unpredictably, which
(tensor, chunk) pairs of the node's span must be opened (`select_chunks`). The node reads those bytes
from the parameter tensors it is actually running (never from a file), attaches each chunk's Merkle
path from the release's sidecar, and signs the lot with its node key. The verifier checks, failing
closed: the nonce is the one it issued and unused (no replay), the proof names the node it asked and
is signed by that node's key (no borrowing another node's proof), it arrived before the deadline
(no time to fetch or recompute elsewhere), the opened pairs are exactly the ones the nonce selects,
and every chunk verifies against the signed manifest's Merkle root.

The release commits to one representation (the manifest's dtype, float32 for imports); a node
serving a quantized or re-typed copy holds different bytes and fails.
"""

from __future__ import annotations

import hashlib
import struct

import torch

from registry.manifest import Manifest, layer_of
from serve import wire
from serve.config import DEFAULT_PROOF_CHUNKS as DEFAULT_CHUNKS
from serve.exceptions import ProofFailure


def span_tensors(manifest: Manifest, start: int, end: int) -> list[tuple[str, int]]:
    """(tensor name, chunk count) of the span's tensors, in a fixed order."""
    return sorted((name, t.chunks) for name, t in manifest.tensors.items()
                  if (layer := layer_of(name)) is not None and start <= layer < end)


def select_chunks(nonce: bytes, node_id: str, tensors: list[tuple[str, int]],
                  count: int) -> list[tuple[str, int]]:
    """The (tensor, chunk) pairs a nonce opens, uniform over all chunks of the span."""
    total = sum(n for _, n in tensors)
    picks = []
    for i in range(count):
        h = hashlib.sha256(b"shoal-proof" + nonce + node_id.encode() + struct.pack(">I", i))
        target = int.from_bytes(h.digest()[:8], "big") % total
        for name, n in tensors:
            if target < n:
                picks.append((name, target))
                break
            target -= n
    return picks


def proof_digest(nonce: bytes, node_id: str, items: list[wire.ProofItem]) -> bytes:
    h = hashlib.sha256(b"shoal-proof-v1" + nonce + node_id.encode())
    for item in items:
        h.update(item.tensor.encode() + b"\0" + struct.pack(">Q", item.index))
        h.update(hashlib.sha256(item.chunk).digest())
        for p in item.path:
            h.update(p)
    return h.digest()


def live_chunk(param: torch.Tensor, index: int, chunk_size: int) -> bytes:
    """Bytes [index*C, (index+1)*C) of a live parameter, as stored in memory."""
    flat = param.detach().contiguous().view(-1).view(torch.uint8)
    return flat[index * chunk_size:(index + 1) * chunk_size].numpy().tobytes()


def check_proof(proof: wire.Proof, *, nonce: bytes, node_id: str, public_key: str,
                manifest: Manifest, start: int, end: int, count: int, used_nonces: set[bytes],
                elapsed_s: float, deadline_s: float) -> None:
    """Raise `ProofFailure` naming the first check that fails."""
    from registry.client import verify_chunk
    from registry.signing import verify_signature

    if proof.nonce != nonce:
        raise ProofFailure("replay", "proof answers another nonce")
    if nonce in used_nonces:
        raise ProofFailure("replay", "nonce already used")
    used_nonces.add(nonce)
    if proof.node_id != node_id:
        raise ProofFailure("node-identity", f"proof is from node {proof.node_id}, "
                           f"not {node_id}")
    if len(proof.items) != count or any(not 0 <= i.index < 2**63 or len(i.path) > 64
                                        for i in proof.items):
        raise ProofFailure("selection", "the proof does not open the chunks asked for")
    if not verify_signature(public_key, proof.signature,
                            proof_digest(proof.nonce, proof.node_id, proof.items)):
        raise ProofFailure("node-signature", "proof is not signed by the node's key")
    if elapsed_s > deadline_s:
        raise ProofFailure("deadline", f"answered in {elapsed_s * 1000:.0f} ms, deadline "
                           f"{deadline_s * 1000:.0f} ms")
    expected = select_chunks(nonce, node_id, span_tensors(manifest, start, end), count)
    if [(i.tensor, i.index) for i in proof.items] != expected:
        raise ProofFailure("selection", "opened chunks are not the ones the nonce selects")
    for item in proof.items:
        if not verify_chunk(manifest, item.tensor, item.index, item.chunk, item.path):
            raise ProofFailure("merkle", f"{item.tensor} chunk {item.index} does not match "
                               "the release")
