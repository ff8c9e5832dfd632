"""Where each document lives in a registry tree, and where a process keeps its checkouts.

The registry is a static tree (docs/registry-layout.md); these functions are the only place its
paths are spelt, so readers, writers and tests agree and nothing outside registry/ builds a path.

    root/<n>.root.json               trust policy, version n
    versions/<hex>/manifest.json     manifest envelope of version sha256:<hex>
    blobs/sha256/<hex>               file contents, addressed by SHA-256
    channels/<name>/<seq>.json       channel records, append-only
    channels/<name>/head.json        the newest record
    snapshot.json, snapshots/<n>.json
    proposals/<name>.json            a channel record awaiting more signatures (k-of-n)
    notices/<hex>.json               erasure notice: version sha256:<hex> trained on erased rows

A checkout is a local directory holding the verified files one role of process needs of a version:
`<models_dir>/<hex16>-<role>` (`full`, `head`, or `L<start>-<end>` for a span).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

MANIFEST_FILE = "manifest.json"
SNAPSHOT = "snapshot.json"
VERSIONS = "versions"
CHANNELS = "channels"

Role = Literal["full", "head", "span"]
"""What a process fetches of a version: every file (`full`: the trusted replica, draft models,
training), the gateway's `head` (config, tokenizer, embeddings, final norm, LM head), or a node's
`span` of decoder layers (config and tokenizer, plus the span's shards)."""


def hex_of(version_id: str) -> str:
    return version_id.removeprefix("sha256:")


def root(n: int) -> str:
    return f"root/{n}.root.json"


def manifest(version_id: str) -> str:
    return f"{VERSIONS}/{hex_of(version_id)}/{MANIFEST_FILE}"


def blob(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def channel_dir(channel: str) -> str:
    return f"{CHANNELS}/{channel}"


def channel_head(channel: str) -> str:
    return f"{CHANNELS}/{channel}/head.json"


def channel_record(channel: str, sequence: int) -> str:
    return f"{CHANNELS}/{channel}/{sequence:010d}.json"


def notice(version_id: str) -> str:
    return f"notices/{hex_of(version_id)}.json"


def proposal(channel: str) -> str:
    return f"proposals/{channel}.json"


def snapshot(version: int) -> str:
    return f"snapshots/{version:010d}.json"


def checkout_dir(models_dir: Path, version_id: str, role: Role,
                 span: tuple[int, int] | None = None) -> Path:
    """The one local directory scheme for verified checkouts: `<hex16>-<role>`."""
    if role == "span":
        if span is None:
            raise ValueError("a span checkout needs span=(start, end)")
        label = f"L{span[0]}-{span[1]}"
    else:
        label = role
    return models_dir / f"{hex_of(version_id)[:16]}-{label}"
