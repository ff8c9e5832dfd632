"""Erasure beyond the trace store: what curation derived from a contributor's traces.

A trace store opened through `ShoalConfig.trace_store()` (the CLI, the flows) or by a gateway
with a home gets `erase_derived` as an erasure hook, so one erasure also

- withdraws at once every dataset that held an erased trace (`curate.catalog.withdraw`: its
  directory deleted, `latest.json` no longer naming it); the dataset stays marked for rebuild, so
  the next curate run builds its replacement and flags the model versions trained on it;
- empties the curate chunk cache (`$SHOAL_HOME/cache/curate`) whenever a trace went: cached,
  scrubbed chunks may hold the text of erased traces, whether or not they reached a dataset.

The counts go in the erasure receipt. No Prefect, no network.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traces.store import Erased, TraceStore


def erase_derived(home: Path) -> Callable[["Erased"], dict[str, int]]:
    """The erasure hook for the datasets and the cache under `home`."""
    from curate import catalog

    datasets, cache = Path(home) / "datasets", Path(home) / "cache" / "curate"

    def hook(erased: "Erased") -> dict[str, int]:
        withdrawn = catalog.withdraw(datasets, erased.datasets) if erased.datasets else []
        files = 0
        if erased.request_ids and cache.exists():
            files = sum(1 for p in cache.rglob("*") if p.is_file())
            shutil.rmtree(cache)
        return {"datasets_withdrawn": len(withdrawn), "curate_cache_files": files}

    return hook


def with_derived_erasure(store: "TraceStore", home: Path) -> "TraceStore":
    """`store`, erasing what curation derived under `home` along with its own rows."""
    store.erasure_hooks.append(erase_derived(home))
    return store
