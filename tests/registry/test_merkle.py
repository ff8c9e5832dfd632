"""Merkle trees: every chunk of every tree shape proves; anything altered does not."""

from __future__ import annotations

import os

import pytest

from registry import merkle


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 17])
def test_every_chunk_proves_and_tampering_fails(n):
    size = 16
    data = os.urandom(n * size - 3)  # last chunk short
    leaves = merkle.chunk_leaves(data, size)
    assert len(leaves) == merkle.num_chunks(len(data), size) == n
    levels = merkle.build_levels(leaves)
    root = levels[-1][0]
    for i in range(n):
        chunk = data[i * size:(i + 1) * size]
        path = merkle.path_of(levels, i)
        assert merkle.verify_path(root, n, i, chunk, path)
        assert not merkle.verify_path(root, n, i, bytes([chunk[0] ^ 1]) + chunk[1:], path)
        if n > 1:
            other = (i + 1) % n  # the same bytes claimed at another position
            assert not merkle.verify_path(root, n, other, chunk, path)
            assert not merkle.verify_path(root, n, i, chunk, path[:-1])


def test_leaf_and_node_hashes_are_domain_separated():
    a, b = merkle.leaf_hash(0, b"x"), merkle.leaf_hash(1, b"y")
    inner = merkle.node_hash(a, b)
    # an inner node's preimage presented as a leaf chunk must not reproduce it
    assert merkle.leaf_hash(0, a + b) != inner
    assert merkle.root_of([a, b]) == inner
