"""Following a registry channel: what nodes and gateways use to roll out new versions.

A `Watcher` reads one channel through a verifying registry client (signatures and thresholds,
monotonic sequences, expiry). It returns the head's version only when every check passes; when a
read fails (an unsigned or tampered record, a rolled-back sequence, an expired head, an unreachable
store) it keeps the last good version and records why, so the process keeps serving what it had and
`shoal status` can show the reason. `checkout` fetches and verifies just the files a process needs (`registry.layout.Role`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.layout import Role

from serve.config import ChannelWatch

log = logging.getLogger("shoal.rollout")


class Watcher:
    def __init__(self, watch: ChannelWatch) -> None:
        from registry.client import RegistryClient
        from registry.storage import Store

        self.watch = watch
        self.client = RegistryClient(Store(watch.registry_url), watch.trust_dir)
        self.version: str | None = None
        self.state: dict = {"channel": watch.channel, "ok": None, "error": "", "sequence": None,
                            "version": None, "checked_at": None}

    def poll(self) -> str | None:
        """The verified head version, or the last good one (with the failure recorded)."""
        self.state["checked_at"] = time.time()
        try:
            record = self.client.channel(self.watch.channel)
        except Exception as exc:  # fail closed: never act on a record that did not verify
            if self.state["ok"] is not False or self.state["error"] != str(exc):
                log.warning("channel %s refused, keeping %s: %s", self.watch.channel,
                            (self.version or "-")[:19], exc)
            self.state.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            return self.version
        self.version = record.version
        self.state.update(ok=True, error="", sequence=record.sequence, version=record.version)
        return self.version

    def checkout(self, version: str, role: "Role", span: tuple[int, int] | None = None) -> Path:
        """Fetch and verify what `role` needs of `version` into its own directory."""
        return self.client.checkout_role(version, self.watch.models_dir, role, span)[0]
