"""k-of-n promotion by maintainers signing in turn, staging keys that cannot move production, and
policy revisions (rotation, revocation) that keep every role satisfiable."""

from __future__ import annotations

import pytest

from registry.exceptions import PolicyError, ProposalConflict, VerificationError
from registry.policy import expires_in, revise
from registry.publish import (current_root, import_model, init_registry, make_policy,
                              pending_proposal, promote, propose, rotate_root)
from registry.signing import SigningKey
from registry.storage import Store


@pytest.fixture
def reg(tmp_path, tiny_model_dir):
    """A registry whose production needs 2 of 3 maintainers, with a staging and a snapshot role,
    and one signed version of the tiny model (two, for conflicts)."""
    from tests.helpers import make_tiny_llama

    keys = {n: SigningKey.generate(n) for n in ("root", "release", "staging", "alice", "bob",
                                                "carol")}
    maintainers = [keys["alice"], keys["bob"], keys["carol"]]
    policy = make_policy(version=1, registry="test-registry", roles={
        "root": ([keys["root"]], 1), "release": ([keys["release"]], 1),
        "staging": ([keys["staging"]], 1), "promote": (maintainers, 2),
        "snapshot": ([keys["staging"], *maintainers], 1)})
    store = Store(str(tmp_path / "registry"))
    init_registry(store, policy, [keys["root"]], [keys["staging"]])
    make_tiny_llama(tmp_path / "v2", seed=5)
    versions = [import_model(store, d, name="tiny", release_keys=[keys["release"]]).version_id
                for d in (tiny_model_dir, tmp_path / "v2")]
    return store, keys, versions


def client(store, tmp_path):
    from registry.client import RegistryClient

    return RegistryClient(store, tmp_path / "state")


def test_two_maintainers_sign_in_turn_and_the_second_publishes(reg, tmp_path):
    store, k, (v1, v2) = reg
    first = propose(store, v1, "production", [k["alice"]], note="release 1")
    assert not first.published and first.threshold == 2 and len(first.signed_by) == 1
    assert not store.exists("channels/production/head.json")
    assert pending_proposal(store, "production").version == v1
    with pytest.raises(ProposalConflict, match="awaits signatures \\(1 of 2\\)"):
        propose(store, v2, "production", [k["bob"]])
    again = propose(store, v1, "production", [k["alice"]])  # the same signer twice counts once
    assert not again.published and again.signed_by == first.signed_by
    second = propose(store, v1, "production", [k["bob"]])
    assert second.published and len(second.signed_by) == 2
    record = client(store, tmp_path).channel("production")
    assert (record.version, record.sequence, record.note) == (v1, 1, "release 1")
    assert pending_proposal(store, "production") is None


def test_a_proposal_made_stale_by_a_newer_head_is_dropped(reg):
    store, k, (v1, v2) = reg
    propose(store, v1, "production", [k["alice"]])
    promote(store, v2, "production", [k["bob"], k["carol"]])  # two signers at once
    assert pending_proposal(store, "production") is None
    late = propose(store, v1, "production", [k["bob"]])  # a new proposal, sequence 2
    assert not late.published and late.record.sequence == 2


def test_staging_key_signs_staging_but_never_production(reg, tmp_path):
    store, k, (v1, _) = reg
    promote(store, v1, "staging", [k["staging"]])
    assert client(store, tmp_path).channel("staging").version == v1
    with pytest.raises(VerificationError) as exc:
        promote(store, v1, "production", [k["staging"]])
    assert exc.value.check == "wrong-role" and "'promote' role" in str(exc.value)
    with pytest.raises(VerificationError) as exc:
        promote(store, v1, "staging-draft", [k["alice"], k["bob"]])
    assert exc.value.check == "wrong-role"


def test_unsigned_version_is_refused_before_anything_is_signed(reg, tmp_path, tiny_model_dir):
    from tests.helpers import make_tiny_llama

    store, k, _ = reg
    make_tiny_llama(tmp_path / "v3", seed=9)
    unsigned = import_model(store, tmp_path / "v3", name="tiny").version_id
    with pytest.raises(VerificationError) as exc:
        propose(store, unsigned, "production", [k["alice"]])
    assert exc.value.check == "unsigned"
    assert pending_proposal(store, "production") is None


def test_revocation_removes_the_key_everywhere_and_keeps_thresholds_satisfiable(reg, tmp_path):
    store, k, (v1, _) = reg
    current = current_root(store)
    v2 = revise(current, revoke=[k["carol"].keyid], expires=expires_in(365))
    assert k["carol"].keyid in v2.revoked
    assert all(k["carol"].keyid not in r.keyids for r in v2.roles.values())
    rotate_root(store, v2, [k["root"]])
    assert client(store, tmp_path).policy().version == 2
    with pytest.raises(VerificationError) as exc:
        promote(store, v1, "production", [k["alice"], k["carol"]])
    assert exc.value.check == "revoked-key"
    with pytest.raises(PolicyError, match="'promote' would have 1 key"):
        revise(v2, revoke=[k["bob"].keyid], expires=expires_in(365))
    with pytest.raises(PolicyError, match="not keys of this registry"):
        revise(v2, revoke=["ab" * 32], expires=expires_in(365))
