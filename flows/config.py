"""Where shoal keeps its state, read from the environment in this one place.

| variable             | default                    | meaning                                   |
|----------------------|----------------------------|-------------------------------------------|
| SHOAL_HOME           | ~/.shoal                   | keys, trust state, checkouts              |
| SHOAL_REGISTRY       | $SHOAL_HOME/registry       | registry tree: a directory or fsspec URL  |
| SHOAL_KEY_PASSPHRASE | (none)                     | passphrase for encrypted key files        |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShoalConfig:
    home: Path
    """Root of local state; created on first use."""
    registry_url: str
    """Where the registry tree lives: a local path or any fsspec URL (s3://…, memory://…)."""
    key_passphrase: str | None = None
    """Passphrase for creating and opening encrypted key files."""

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def trust_dir(self) -> Path:
        """The verifying client's pinned root and highest-seen sequences."""
        return self.home / "trust"

    @property
    def models_dir(self) -> Path:
        """Verified checkouts of versions, one directory per version and role
        (`registry.layout.checkout_dir`)."""
        return self.home / "models"

    @property
    def datasets_dir(self) -> Path:
        """Curated datasets, one directory per dataset id, plus `latest.json`."""
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        """Training runs: checkpoints, logs, exported weights, eval reports."""
        return self.home / "runs"

    @property
    def cache_dir(self) -> Path:
        """Flow task results kept for input-hash caching (wiped when an erasure forces a rebuild)."""
        return self.home / "cache"

    @classmethod
    def from_env(cls) -> "ShoalConfig":
        home = Path(os.environ.get("SHOAL_HOME", Path.home() / ".shoal")).expanduser().resolve()
        return cls(home=home, registry_url=os.environ.get("SHOAL_REGISTRY", str(home / "registry")),
                   key_passphrase=os.environ.get("SHOAL_KEY_PASSPHRASE") or None)

    @classmethod
    def at(cls, home: str | Path) -> "ShoalConfig":
        """The configuration with its state under `home` (the rest still from the environment)."""
        env = cls.from_env()
        registry = os.environ.get("SHOAL_REGISTRY", str(Path(home).resolve() / "registry"))
        return cls(home=Path(home).resolve(), registry_url=registry,
                   key_passphrase=env.key_passphrase)

    def store(self):  # -> registry.storage.Store, imported lazily to keep the CLI fast
        from registry.storage import Store

        if "://" not in self.registry_url:
            Path(self.registry_url).mkdir(parents=True, exist_ok=True)
        return Store(self.registry_url)

    def trace_store(self):  # -> traces.store.TraceStore
        from traces.store import TraceStore, TraceStoreConfig

        from flows.erasure import with_derived_erasure

        root = self.home / "traces"
        return with_derived_erasure(
            TraceStore(TraceStoreConfig(uri=str(root / "lancedb"), log_dir=root / "log")),
            self.home)

    def checkout(self, ref: str) -> tuple[str, Path]:
        """Resolve `ref` (name@channel, channel or version) and check the whole version out,
        verified, into `models_dir`; returns (version id, directory)."""
        client = self.client()
        version_id = client.resolve(ref)
        return version_id, client.checkout_role(version_id, self.models_dir, "full")[0]

    def client(self):  # -> registry.client.RegistryClient
        from registry.client import RegistryClient

        return RegistryClient(self.store(), self.trust_dir)
