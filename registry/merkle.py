"""Merkle trees over fixed-size chunks of a tensor's bytes.

A tensor's bytes are cut into `chunk_size` chunks (the last may be shorter). Hashing is
domain-separated so a leaf can never pass for an inner node, and each leaf binds its chunk index,
so a chunk cannot be presented at another position:

    leaf(i)    = SHA-256(0x00 || u64be(i) || chunk_i)
    node(l, r) = SHA-256(0x01 || l || r)

Levels are built pairwise; an unpaired last node is carried up unchanged (never duplicated, which
would let two different leaf lists share a root). The manifest records the root and the number of
chunks, so a proof's path length is fixed by the verifier, not the prover.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

LEAF = b"\x00"
NODE = b"\x01"
DEFAULT_CHUNK_SIZE = 64 * 1024


def leaf_hash(index: int, chunk: bytes | memoryview) -> bytes:
    h = hashlib.sha256(LEAF)
    h.update(struct.pack(">Q", index))
    h.update(chunk)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def num_chunks(nbytes: int, chunk_size: int) -> int:
    """Chunks in a tensor of `nbytes` bytes; an empty tensor still has one (empty) chunk."""
    return max(1, -(-nbytes // chunk_size))


def chunk_leaves(data: bytes | memoryview, chunk_size: int) -> list[bytes]:
    """The leaf hashes of a whole in-memory buffer."""
    view = memoryview(data)
    n = num_chunks(len(view), chunk_size)
    return [leaf_hash(i, view[i * chunk_size:(i + 1) * chunk_size]) for i in range(n)]


def build_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """All levels of the tree, leaves first, root level (one hash) last."""
    assert leaves, "a tree needs at least one leaf"
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def root_of(leaves: list[bytes]) -> bytes:
    return build_levels(leaves)[-1][0]


def path_of(levels: list[list[bytes]], index: int) -> list[bytes]:
    """The sibling hashes from leaf `index` up to the root (carried-up levels contribute none)."""
    path: list[bytes] = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def verify_path(root: bytes, n_leaves: int, index: int, chunk: bytes | memoryview,
                path: Iterable[bytes]) -> bool:
    """True when `chunk` is leaf `index` of the `n_leaves`-leaf tree whose root is `root`."""
    if not 0 <= index < n_leaves:
        return False
    siblings = list(path)
    current = leaf_hash(index, chunk)
    width, used = n_leaves, 0
    while width > 1:
        if index ^ 1 < width:
            if used >= len(siblings):
                return False
            sib = siblings[used]
            used += 1
            current = node_hash(current, sib) if index % 2 == 0 else node_hash(sib, current)
        index //= 2
        width = (width + 1) // 2
    return used == len(siblings) and current == root
