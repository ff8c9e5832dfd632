"""A process's lasting identity: its Ed25519 key in one file, created on first start.

A node id is the hash of the node's key (serve/records.py), so a node that generates a new key at
every start is a stranger after each restart: gateways put it through probation again and lose
its measured speed. `load_or_create` keeps the key in a PEM file (mode 0600, PKCS#8, encrypted
when a passphrase is given) through `registry.signing`, the same format and checks as every other
key of the project. The same key signs records, receipts and tickets and is the subject key of
the TLS certificate peers pin (serve/transport.py).
"""

from __future__ import annotations

from pathlib import Path

from registry.exceptions import KeyError_
from registry.signing import SigningKey, load_key, save_key


def load_or_create(path: Path, passphrase: str | None = None) -> SigningKey:
    """The key stored at `path` (``NAME.pem``), generated and written there (0600) if absent.
    A file that exists but is unreadable, too open or not an Ed25519 key is an error, never
    silently replaced."""
    path = Path(path)
    if path.suffix != ".pem":
        raise KeyError_(f"{path}: a key file is named NAME.pem")
    if not path.exists():
        save_key(SigningKey.generate(path.stem), path.parent, passphrase)
    return load_key(path.parent, path.stem, passphrase)
