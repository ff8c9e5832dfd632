"""The datasets directory as a catalogue: which datasets exist, which is the newest of each kind
(`latest.json`), and removing the ones an erasure replaced or withdrew.

```
<datasets dir>/
  latest.json            {kind: dataset id} of the newest build
  <kind>-<16 hex>/       one dataset (`curate.card.write_dataset`): train/, eval/, card.json
```

Plain functions over that directory. The catalogue knows nothing about the trace store (which
traces went into which dataset, which datasets an erasure marked): the curate flow reads and
updates that index and passes the ids in. No Prefect, no network.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Iterable
from pathlib import Path

from curate.card import DataCard, write_dataset
from curate.exceptions import DatasetError

LATEST = "latest.json"


def latest(root: Path) -> dict[str, str]:
    """{kind: dataset id} of the newest build (empty before the first one)."""
    path = Path(root) / LATEST
    return json.loads(path.read_text()) if path.exists() else {}


def point_latest(root: Path, ids: dict[str, str]) -> dict[str, str]:
    """Make `ids` ({kind: dataset id}) the newest of their kinds, keeping the other kinds'
    entries; written atomically. Returns the whole mapping."""
    path = Path(root) / LATEST
    merged = {**latest(root), **ids}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
    tmp.replace(path)
    return merged


def resolve(root: Path, kind: str, ids: list[str] | None = None) -> list[Path]:
    """The directories of datasets `ids`, or of the newest `kind` dataset when no ids are given;
    each must hold a data card."""
    if not ids:
        newest = latest(root).get(kind)
        if not newest:
            raise DatasetError(f"no curated {kind} dataset yet: run `shoal flow curate` first")
        ids = [newest]
    dirs = [Path(root) / i for i in ids]
    missing = [str(d) for d in dirs if not (d / "card.json").is_file()]
    if missing:
        raise DatasetError(f"no such dataset: {', '.join(missing)}")
    return dirs


def write_sets(root: Path, built: dict[str, tuple[dict[str, list[dict]], dict]],
               card_fields: dict) -> dict[str, DataCard]:
    """Write each built set ({kind: (splits, builder stats)}) with its card under `root`; the
    builder's stats join the card's counts. Returns {kind: card}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cards = {}
    for kind, (splits, stats) in built.items():
        fields = {**card_fields, "counts": {**card_fields["counts"], "builder": stats}}
        cards[kind] = write_dataset(root, kind, splits, fields)
    return cards


def request_ids(splits: dict[str, list[dict]]) -> list[str]:
    """The request ids of a set's rows, every split: the traces the dataset is made of."""
    return [r["request_id"] for rows in splits.values() for r in rows]


def entry(root: Path, card: DataCard) -> dict:
    """How a written dataset is reported: {dataset_id, path, splits, rows_digest}."""
    return {"dataset_id": card.dataset_id, "path": str(Path(root) / card.dataset_id),
            "splits": card.splits, "rows_digest": card.rows_digest}


def drop(root: Path, dataset_ids: Iterable[str], keep: Collection[str] = ()) -> list[str]:
    """Delete the directories of `dataset_ids` except those in `keep` (a rebuild that came out
    with identical rows, so nothing erased was in it); returns the ids deleted."""
    root = Path(root)
    dropped = [d for d in dataset_ids if d not in keep]
    for dataset_id in dropped:  # every id checked before anything is deleted
        if dataset_id in ("", ".", "..") or (root / dataset_id).parent != root:
            raise DatasetError(f"dataset id {dataset_id!r} does not name a dataset under {root}")
    for dataset_id in dropped:
        shutil.rmtree(root / dataset_id, ignore_errors=True)
    return dropped


def withdraw(root: Path, dataset_ids: Iterable[str]) -> list[str]:
    """Erasure, at once: delete these datasets and stop `latest.json` naming them (training then
    refuses until a curate run builds their replacements); returns the ids that existed."""
    root = Path(root)
    present = [d for d in dataset_ids if (root / d).exists()]
    drop(root, present)
    path = root / LATEST
    kept = {k: v for k, v in latest(root).items() if v not in set(dataset_ids)}
    if path.exists() and kept != latest(root):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kept, indent=2, sort_keys=True))
        tmp.replace(path)
    return present
