"""The suffix drafter keeps tenants apart and follows consent: partitions, `store: false`, the
`drafting` scope, expiry, revocation and erasure (in this process and from another one)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from serve.drafters.base import DraftScope, Shared
from serve.drafters.suffix import SuffixDrafter
from serve.gateway.drafting import DraftingConsent, scope_for
from traces.store import TraceStore, TraceStoreConfig

SECRET = [7, 3, 9, 1, 4, 4, 8, 2, 6, 5]
CONTEXT = SECRET[:3]


def drafted(d: SuffixDrafter, scope: DraftScope) -> list[int]:
    return d.propose(CONTEXT, 6, scope).tokens


def test_one_tenant_never_drafts_from_another():
    d = SuffixDrafter()
    victim, attacker = DraftScope("victim", learn=True), DraftScope("attacker", learn=True)
    d.observe(SECRET, victim)
    assert drafted(d, victim) == SECRET[3:9]  # it does learn, for its own tenant
    assert drafted(d, attacker) == []
    assert drafted(d, DraftScope()) == []  # no tenant (open gateway): shared text only


def test_store_false_and_grants_without_drafting_teach_nothing_shared():
    d = SuffixDrafter()
    forever = Shared("alice", "g1", time.time() + 3600)
    d.observe(SECRET, DraftScope("alice", learn=False, shared=forever))  # store: false
    assert drafted(d, DraftScope("alice", learn=True)) == []
    assert drafted(d, DraftScope("bob")) == []
    d.observe(SECRET, DraftScope("alice", learn=True))  # a grant without `drafting`
    assert drafted(d, DraftScope("bob")) == []
    d.observe(SECRET, DraftScope("alice", learn=True, shared=forever))
    assert drafted(d, DraftScope("bob")) == SECRET[3:9]  # consented: shared


def test_shared_text_goes_with_its_grant():
    d = SuffixDrafter()
    d.observe(SECRET, DraftScope("alice", learn=True, shared=Shared("alice", "g1",
                                                                    time.time() + 0.2)))
    other = [5, 5, 1, 2, 3, 8, 8, 8]
    d.observe(other, DraftScope("carol", learn=True, shared=Shared("carol", "g2",
                                                                   time.time() + 3600)))
    assert drafted(d, DraftScope("bob")) == SECRET[3:9]
    time.sleep(0.25)
    assert drafted(d, DraftScope("bob")) == []  # expired: skipped at once, then dropped
    assert d.drop_expired() == 1
    assert d.forget_grants({"g2"}) == 1 and d.shared.index == {}  # revoked: no n-gram left


def test_erasure_reaches_the_drafter_in_this_and_other_processes(tmp_path):
    def open_store():
        return TraceStore(TraceStoreConfig(uri=str(tmp_path / "db"), log_dir=tmp_path / "log",
                                           embed=False, auth_cache_s=0))

    store, cli = open_store(), open_store()  # `cli` stands in for `shoal traces erase`
    alice, bob = (store.create_account("contributor", n) for n in ("alice", "bob"))
    grant = store.create_grant(alice, ["sft", "drafting"], 30)
    store.create_grant(bob, ["sft"], 30)
    d = SuffixDrafter()
    consent = DraftingConsent(store, d, tokenizer=None)
    asks = SimpleNamespace(store=None, metadata=None)
    scope = scope_for(store, alice, asks)
    assert scope.shared is not None and scope.shared.grant_id == grant.grant_id
    assert scope_for(store, bob, asks).shared is None  # no `drafting` scope
    assert not scope_for(store, alice, SimpleNamespace(store=False, metadata=None)).learn
    d.observe(SECRET, scope)
    receipt = store.erase_contributor(alice.account_id)
    assert receipt["erased"]["drafter_sequences"] == 2  # alice's own index and the shared one
    assert drafted(d, DraftScope("bob")) == [] and drafted(d, DraftScope(alice.account_id)) == []

    carol = store.create_account("contributor", "carol")
    d.observe(SECRET, scope_for(store, carol, asks))  # no grant: her own partition only
    store.create_grant(carol, ["drafting"], 30)
    d.observe(SECRET, scope_for(store, carol, asks))
    assert drafted(d, DraftScope("bob")) == SECRET[3:9]
    cli.erase_contributor(carol.account_id)  # another process: the gateway learns it by syncing
    assert consent.sync()["erased"] == 3  # her two own sequences and the shared one
    assert drafted(d, DraftScope("bob")) == [] and drafted(d, DraftScope(carol.account_id)) == []
