"""The datasets catalogue: `latest.json` merged kind by kind, datasets resolved by id or as the
newest of a kind (with the id or kind named when missing), and replaced datasets removed without
reaching outside the datasets directory."""

from __future__ import annotations

import json

import pytest

from curate import catalog
from curate.exceptions import DatasetError


def _dataset(root, dataset_id: str):
    (root / dataset_id).mkdir(parents=True)
    (root / dataset_id / "card.json").write_text("{}")
    return root / dataset_id


def test_latest_is_merged_kind_by_kind(tmp_path):
    assert catalog.latest(tmp_path) == {}
    catalog.point_latest(tmp_path, {"sft": "sft-1", "dpo": "dpo-1"})
    assert catalog.point_latest(tmp_path, {"sft": "sft-2"}) == {"dpo": "dpo-1", "sft": "sft-2"}
    assert json.loads((tmp_path / "latest.json").read_text()) == {"dpo": "dpo-1", "sft": "sft-2"}
    assert not list(tmp_path.glob("*.tmp"))


def test_resolve_by_id_or_newest_of_a_kind(tmp_path):
    with pytest.raises(DatasetError, match="no curated sft dataset yet"):
        catalog.resolve(tmp_path, "sft")
    new = _dataset(tmp_path, "sft-2")
    old = _dataset(tmp_path, "sft-1")
    catalog.point_latest(tmp_path, {"sft": "sft-2"})
    assert catalog.resolve(tmp_path, "sft") == [new]
    assert catalog.resolve(tmp_path, "sft", ["sft-1", "sft-2"]) == [old, new]
    with pytest.raises(ValueError, match="no such dataset: .*sft-9"):
        catalog.resolve(tmp_path, "sft", ["sft-1", "sft-9"])


def test_drop_keeps_rebuilt_sets_and_stays_inside(tmp_path):
    root = tmp_path / "datasets"
    for name in ("sft-1", "dpo-1", "sft-2"):
        _dataset(root, name)
    assert catalog.drop(root, ["sft-1", "dpo-1", "gone-1"], keep=["dpo-1"]) == ["sft-1",
                                                                               "gone-1"]
    assert sorted(p.name for p in root.iterdir()) == ["dpo-1", "sft-2"]
    for bad in ("..", "../datasets", "a/b"):
        with pytest.raises(DatasetError, match="does not name a dataset"):
            catalog.drop(root, [bad])
    assert root.is_dir() and sorted(p.name for p in root.iterdir()) == ["dpo-1", "sft-2"]


def test_entries_and_members_of_written_sets(tmp_path):
    from curate.card import DataCard

    splits = {"train": [{"request_id": "a"}, {"request_id": "b"}], "eval": [{"request_id": "c"}]}
    assert catalog.request_ids(splits) == ["a", "b", "c"]
    card = DataCard(dataset_id="sft-1", kind="sft", format="f", rows_digest="d", created_at="t",
                    source={}, trace_ids={}, counts={}, splits={"train": 2, "eval": 1},
                    config={}, config_digest="c", flow_run_id="r", scrubber={},
                    decontamination={})
    assert catalog.entry(tmp_path, card) == {"dataset_id": "sft-1",
                                             "path": str(tmp_path / "sft-1"),
                                             "splits": {"train": 2, "eval": 1},
                                             "rows_digest": "d"}
