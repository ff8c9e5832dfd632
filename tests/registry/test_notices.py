"""Erasure notices: versions trained on erased datasets, and the versions trained from them, are
flagged with a release-signed notice that only grows; a forged or misplaced notice is refused."""

from __future__ import annotations

import json

import pytest

from registry import layout
from registry.exceptions import VerificationError
from registry.manifest import Lineage
from registry.notices import flag, notice
from registry.publish import current_root, import_model


@pytest.fixture
def family(registry, tmp_path, tiny_model_dir):
    """genesis → child (trained on ds-a) → grandchild (trained on ds-b); other (on ds-c)."""
    from tests.helpers import make_tiny_llama

    def version(seed: int, parent: str | None, dataset: str | None) -> str:
        make_tiny_llama(tmp_path / f"m{seed}", seed=seed)
        lineage = Lineage(parent=parent, training={"dataset_ids": [dataset]} if dataset else {})
        return import_model(registry.store, tmp_path / f"m{seed}", name="tiny", lineage=lineage,
                            release_keys=[registry.keys["release"]]).version_id

    genesis = version(1, None, None)
    child = version(2, genesis, "ds-a")
    grandchild = version(3, child, "ds-b")
    other = version(4, genesis, "ds-c")
    return registry, {"genesis": genesis, "child": child, "grandchild": grandchild,
                      "other": other}


def test_erased_datasets_flag_their_versions_and_descendants(family):
    reg, v = family
    policy = current_root(reg.store)
    written = flag(reg.store, policy, ["ds-a"], [reg.keys["release"]])
    assert {n.version for n in written} == {v["child"], v["grandchild"]}
    assert notice(reg.store, policy, v["child"]).datasets == ["ds-a"]
    grand = notice(reg.store, policy, v["grandchild"])
    assert grand.datasets == ["ds-a"] and grand.inherited_from == [v["child"]]
    assert notice(reg.store, policy, v["genesis"]) is None
    assert notice(reg.store, policy, v["other"]) is None
    assert flag(reg.store, policy, ["ds-a"], [reg.keys["release"]]) == []  # nothing new
    flag(reg.store, policy, ["ds-b"], [reg.keys["release"]])  # notices only grow
    assert notice(reg.store, policy, v["grandchild"]).datasets == ["ds-a", "ds-b"]


def test_notices_need_release_signatures_and_name_their_version(family):
    reg, v = family
    policy = current_root(reg.store)
    with pytest.raises(VerificationError) as exc:
        flag(reg.store, policy, ["ds-c"], [reg.keys["promote"]])
    assert exc.value.check == "wrong-role"
    flag(reg.store, policy, ["ds-a"], [reg.keys["release"]])
    # a valid notice copied onto another version is refused
    reg.store.write(layout.notice(v["other"]), reg.store.read(layout.notice(v["child"])))
    with pytest.raises(VerificationError) as exc:
        notice(reg.store, policy, v["other"])
    assert exc.value.check == "mix-and-match"
    # a notice whose content was edited no longer verifies
    envelope = json.loads(reg.store.read(layout.notice(v["child"])))
    envelope["signed"]["datasets"] = []
    reg.store.write(layout.notice(v["child"]), json.dumps(envelope).encode())
    with pytest.raises(VerificationError) as exc:
        notice(reg.store, policy, v["child"])
    assert exc.value.check == "bad-signature"
