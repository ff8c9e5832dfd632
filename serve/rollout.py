"""Following a registry channel: what nodes and gateways use to roll out new versions.

Both kinds of process hold a `VersionSet`: the versions loaded side by side (a node's spans, a
gateway's runtimes), the one new work starts on, and when each older one stopped being current.
`follow` is the one rollout loop they share: poll the channel, load a new head beside the current
version, switch to it once it is ready (a node: at once; a gateway: once the swarm can route it),
and unload old versions when nothing uses them any more and a grace period has passed. Work that
started on a version keeps it until it ends.

A `Watcher` reads one channel through a verifying registry client (signatures and thresholds,
monotonic sequences, expiry). It returns the head's version only when every check passes; when a
read fails (an unsigned or tampered record, a rolled-back sequence, an expired head, an unreachable
store) it keeps the last good version and records why, so the process keeps serving what it had and
`shoal status` can show the reason. `checkout`
fetches and verifies just the files a process needs (`registry.layout.Role`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from serve.config import ChannelWatch

if TYPE_CHECKING:
    from registry.layout import Role

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


T = TypeVar("T")


class VersionSet(Generic[T]):
    """Versions loaded side by side, the `current` one new work starts on, and since when each
    other one has been retired (loaded but not current)."""

    def __init__(self, version: str, item: T) -> None:
        self.items: dict[str, T] = {version: item}
        self.current = version
        self.retired_at: dict[str, float] = {}

    def __contains__(self, version: object) -> bool:
        return version in self.items

    def __getitem__(self, version: str) -> T:
        return self.items[version]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, version: str) -> T | None:
        return self.items.get(version)

    @property
    def active(self) -> T:
        """The item of the current version."""
        return self.items[self.current]

    def add(self, version: str, item: T) -> None:
        """Load `version` beside the others without making it current."""
        self.items[version] = item
        self.retired_at[version] = time.monotonic()

    def switch(self, version: str) -> str:
        """Make a loaded `version` current; returns the previous current version."""
        if version not in self.items:
            raise KeyError(f"version {version[:19]}… is not loaded")
        old, self.current = self.current, version
        if old != version:
            self.retired_at[old] = time.monotonic()
        self.retired_at.pop(version, None)
        return old

    def drained(self, in_use: set[str], grace_s: float) -> list[tuple[str, T]]:
        """Remove and return the versions that are not current, not in `in_use`, and retired for
        longer than `grace_s`."""
        now = time.monotonic()
        gone = [v for v, since in self.retired_at.items()
                if v != self.current and v not in in_use and now - since > grace_s]
        out = []
        for version in gone:
            del self.retired_at[version]
            out.append((version, self.items.pop(version)))
        return out


async def follow(watcher: Watcher, versions: VersionSet[T], *,
                 load: Callable[[str], Awaitable[T]],
                 ready: Callable[[str], Awaitable[bool]],
                 in_use: Callable[[], set[str]],
                 unload: Callable[[str, T], Awaitable[None]],
                 on_error: Callable[[str], None],
                 on_switch: Callable[[str, str], None] | None = None,
                 each_step: Callable[[], Awaitable[None]] | None = None) -> None:
    """The rollout loop of a node or a gateway; runs until cancelled.

    `load(version)` fetches, verifies and builds a version's item; `ready(version)` says whether
    it may become current; `in_use()` names versions that running work still holds; `unload`
    releases a drained item; `on_switch(old, new)` and `each_step()` let the caller record
    switches and do its own per-poll work. A step that fails changes nothing: `on_error` records why, the
    process keeps serving what it had, and the next poll tries again."""
    watch = watcher.watch
    while True:
        try:
            head = await asyncio.to_thread(watcher.poll)
            if head and head not in versions:
                versions.add(head, await load(head))
            if head and head != versions.current and await ready(head):
                old = versions.switch(head)
                log.info("now serving %s (was %s)", head[:19], old[:19])
                if on_switch is not None:
                    on_switch(old, head)
            if each_step is not None:
                await each_step()
            for version, item in versions.drained(in_use() | ({head} if head else set()),
                                                  watch.drain_grace_s):
                await unload(version, item)
                log.info("unloaded %s", version[:19])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed rollout step must never take the process down
            log.warning("rollout step failed: %s", exc)
            on_error(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(watch.poll_s)
