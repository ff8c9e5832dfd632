"""What the gateway's learning drafters may learn, and keeping them in step with consent.

`scope_for` decides, per request, the `DraftScope` (serve/drafters/base.py): the caller's account
is its tenant; `store: false` (or `metadata.shoal_store` false) means nothing is learnt from it;
only a contributor whose active grant includes `drafting` lets the shared index learn.

`DraftingConsent` keeps a runtime's suffix drafter in step with the trace store (`attach`): it
seeds the shared index from stored traces granted `drafting` (grant active, not expired), purges a
contributor at once when this process erases them (an erasure hook of the store, whose count goes
in the receipt), and, every `interval_s` (`run`, a task of the runtime), purges what an erasure in
another process (`shoal traces erase`) or a revoked or expired grant no longer allows.

It knows the store's query methods and the drafter's forget methods; nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from serve.drafters.base import NO_SCOPE, DraftScope, Shared
from traces.capture import wants_storage

log = logging.getLogger("shoal.gateway")
DRAFTING = "drafting"
"""The grant scope that lets a contributor's text teach other callers' drafts."""


def scope_for(store: Any, caller: Any, body: Any) -> DraftScope:
    """The scope of one request (`store` may be None: static keys, no consent to look up)."""
    if caller is None:
        return NO_SCOPE
    learn = wants_storage(body)
    shared = None
    if learn and store is not None and caller.role == "contributor":
        grant = store.active_grant(caller.account_id)
        if grant is not None and DRAFTING in grant.scopes:
            shared = Shared(caller.account_id, grant.grant_id, grant.expires_at.timestamp())
    return DraftScope(tenant=caller.account_id, learn=learn, shared=shared)


class DraftingConsent:
    """Seeds, purges and watches the suffix drafter of one gateway against its trace store."""

    def __init__(self, store: Any, drafter: Any, tokenizer: Any, interval_s: float = 1.0) -> None:
        self.store, self.drafter, self.tokenizer = store, drafter, tokenizer
        self.interval_s = interval_s
        self._seen = datetime.now(UTC)
        store.erasure_hooks.append(self.on_erase)

    def seed(self, limit: int = 5000) -> int:
        """Teach the shared index the completions of traces whose grant allows drafting."""
        rows = self.store.drafting_traces(limit)
        return self.drafter.seed(
            (self.tokenizer(r["completion"])["input_ids"],
             Shared(r["contributor_id"], r["grant_id"], r["grant_expires_at"].timestamp()))
            for r in rows)

    def on_erase(self, erased: Any) -> dict[str, int]:
        """The store's erasure hook (`traces.store.Erased`): the contributor's drafter state,
        counted for the receipt."""
        return {"drafter_sequences": self.drafter.forget_contributor(erased.contributor_id)}

    def sync(self) -> dict[str, int]:
        """Apply what changed elsewhere: erasures (receipts written since the last look),
        revoked or deleted grants, expired grants."""
        erased = 0
        for receipt in self.store.receipts_since(self._seen):
            self.store.forget_cached_grant(receipt["contributor_id"])  # no trace under it
            erased += self.drafter.forget_contributor(receipt["contributor_id"])
            self._seen = max(self._seen, receipt["created_at"])
        held = self.drafter.shared_grants()
        revoked = self.drafter.forget_grants(self.store.inactive_grants(held)) if held else 0
        return {"erased": erased, "revoked": revoked, "expired": self.drafter.drop_expired()}

    async def run(self) -> None:
        """Sync every `interval_s` until cancelled (when the runtime stops)."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await asyncio.to_thread(self.sync)
                except Exception:  # the next round retries; drafting skips expired text anyway
                    log.exception("drafting consent sync failed")
        finally:
            if self.on_erase in self.store.erasure_hooks:
                self.store.erasure_hooks.remove(self.on_erase)


def attach(store: Any, runtime: Any) -> DraftingConsent | None:
    """Seed a runtime's suffix drafter from the store and keep it in step (None: nothing to do);
    the caller runs `consent.run()` as one of the runtime's tasks."""
    drafter = runtime.engine.drafters.get("suffix")
    if store is None or drafter is None:
        return None
    consent = DraftingConsent(store, drafter, runtime.engine.head.tokenizer)
    consent.seed()
    return consent
