"""Erasure notices: signed statements that a model version was trained on rows erased since.

Erasing a contributor removes their rows from the trace store and every dataset built from them
(traces/, curate/), but weights already trained on those rows keep what they learnt; shoal does
not retract them. What it does is say so: a notice at `notices/<hex>.json` names the version, the
datasets it was trained on that an erasure touched, and whether it inherited that from its parent
(a version trained from flagged weights is flagged too). Notices are signed by `release` keys,
the role that vouches for what a version is, and are checked like manifests when read; a notice
only ever grows (datasets are added, never removed).

Clients that serve never read notices: a notice informs maintainers' decisions (roll back, retrain
without the rows), it does not stop a version by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from registry import layout
from registry.exceptions import RegistryError, VerificationError
from registry.policy import RootPolicy, check_threshold, iso, utcnow
from registry.signing import Envelope, SigningKey
from registry.storage import Store


class ErasureNotice(BaseModel):
    """The signed part of a notice."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = Field("erasure-notice", pattern="^erasure-notice$")
    registry: str
    version: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    datasets: list[str] = Field(description="dataset ids the version was trained on that an "
                                            "erasure touched (its own, or its ancestors')")
    inherited_from: list[str] = Field(default_factory=list,
                                      description="flagged ancestors this version was trained "
                                                  "from")
    noted_at: str


def _lineage(store: Store) -> dict[str, tuple[str | None, list[str]]]:
    """version id -> (parent, dataset ids it was trained on), read from every manifest."""
    out = {}
    for hexid in store.list(layout.VERSIONS):
        try:
            signed = Envelope.model_validate_json(store.read(layout.manifest(hexid))).signed
        except (ValueError, RegistryError):
            continue
        lineage = signed.get("lineage") or {}
        out["sha256:" + hexid] = (lineage.get("parent"),
                                  list((lineage.get("training") or {}).get("dataset_ids", [])))
    return out


def trained_on(store: Store, dataset_ids: Iterable[str]) -> dict[str, tuple[set[str], set[str]]]:
    """The versions trained on any of `dataset_ids`, directly or through their parents:
    version -> (datasets touched, flagged ancestors)."""
    touched = set(dataset_ids)
    lineage = _lineage(store)
    flagged: dict[str, tuple[set[str], set[str]]] = {}
    changed = True
    while changed:  # a fixed point over the parent links (lineage is a forest, so it ends)
        changed = False
        for version, (parent, datasets) in lineage.items():
            own = touched & set(datasets)
            inherited = flagged.get(parent) if parent else None
            if not own and inherited is None:
                continue
            sets = (own | (inherited[0] if inherited else set()),
                    ({parent} | inherited[1]) if inherited else set())
            if flagged.get(version) != sets:
                flagged[version] = sets
                changed = True
    return flagged


def notice(store: Store, policy: RootPolicy, version_id: str) -> ErasureNotice | None:
    """The verified notice of `version_id`, or None when it has none."""
    rel = layout.notice(version_id)
    if not store.exists(rel):
        return None
    try:
        envelope = Envelope.model_validate_json(store.read(rel))
        record = ErasureNotice.model_validate(envelope.signed)
    except ValueError as exc:
        raise VerificationError("notice-schema", f"{rel}: malformed erasure notice ({exc})") from None
    check_threshold(envelope, policy, "release", what=f"erasure notice of {version_id[:19]}")
    if record.version != version_id or record.registry != policy.registry:
        raise VerificationError("mix-and-match", f"{rel} is about another version or registry")
    return record


def flag(store: Store, policy: RootPolicy, dataset_ids: Iterable[str],
         keys: list[SigningKey]) -> list[ErasureNotice]:
    """Write or extend the notice of every version trained on `dataset_ids`; returns the notices
    that changed. `keys` must meet the `release` threshold."""
    written = []
    for version, (datasets, ancestors) in sorted(trained_on(store, dataset_ids).items()):
        old = notice(store, policy, version)
        if old and datasets <= set(old.datasets) and ancestors <= set(old.inherited_from):
            continue
        record = ErasureNotice(
            registry=policy.registry, version=version,
            datasets=sorted(datasets | set(old.datasets if old else [])),
            inherited_from=sorted(ancestors | set(old.inherited_from if old else [])),
            noted_at=iso(utcnow()))
        envelope = Envelope(signed=record.model_dump(mode="json"))
        for key in keys:
            envelope = key.sign(envelope)
        check_threshold(envelope, policy, "release", what=f"erasure notice of {version[:19]}")
        store.write(layout.notice(version), (json.dumps(envelope.model_dump(mode="json"),
                                                        indent=1, sort_keys=True) + "\n").encode())
        written.append(record)
    return written
