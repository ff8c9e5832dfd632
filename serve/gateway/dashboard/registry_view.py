"""The maintainer page's data, read from the signed registry: channel history with its signers,
candidates with their gate checks beside production's numbers, the runs that made them, the last
Prefect flow runs when a Prefect server is configured, and usage totals when the gateway meters
usage. Also the models whose lineage names a contributor's datasets.

Everything comes through `registry.client.RegistryClient`, so every record shown has had its
signatures checked; a part that cannot be read is reported as that part's error, never as an
empty list. Evaluation numbers are the ones the gate recorded in each candidate's lineage
(`lineage.eval.gate.checks`: metric, production, candidate, delta, passed), not recomputed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serve.config import DashboardConfig

MAX_CANDIDATES = 10
MAX_FLOW_RUNS = 10


class RegistryView:
    """Read-only views of one registry (manifests cached by version id: they are immutable)."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self._client = None
        self._manifests: dict[str, Any] = {}

    @property
    def configured(self) -> bool:
        return self.config.registry_url is not None and self.config.trust_dir is not None

    def client(self):
        if self._client is None:
            from registry.client import RegistryClient
            from registry.storage import Store

            self._client = RegistryClient(Store(self.config.registry_url), self.config.trust_dir)
        return self._client

    def manifest(self, version_id: str):
        if version_id not in self._manifests:
            self._manifests[version_id] = self.client().manifest(version_id)
        return self._manifests[version_id]

    # maintainer page -----------------------------------------------------------------------------

    def channels(self) -> list[dict[str, Any]]:
        """Each channel's records, newest first, with the role and key ids that signed them."""
        from registry.policy import channel_role

        client = self.client()
        policy = client.policy()
        out = []
        for name in sorted(client.store.list("channels")):
            try:
                history = client.signed_history(name)
            except Exception as exc:  # a refused channel is shown, not hidden
                out.append({"channel": name, "error": str(exc), "records": []})
                continue
            role = channel_role(policy, name)
            out.append({"channel": name, "role": role, "error": None, "records": [
                {"sequence": r.sequence, "version": r.version, "promoted_at": r.promoted_at,
                 "note": r.note, "expires": r.expires, "signers": signers}
                for r, signers in reversed(history)]})
        return out

    def candidates(self, channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Trained versions (a lineage with a parent), newest first, with their gate checks and
        the channels that point at them now."""
        heads = {c["channel"]: c["records"][0]["version"] for c in channels if c["records"]}
        rows = []
        for version in self.client().versions():
            try:
                m = self.manifest(version)
            except Exception as exc:
                rows.append({"version": version, "error": str(exc)})
                continue
            if m.lineage.parent is None:
                continue
            gate = m.lineage.eval.get("gate") or {}
            rows.append({"version": version, "name": m.name, "error": None,
                         "parent": m.lineage.parent, "training": m.lineage.training,
                         "draft_for": m.lineage.draft_for,
                         "channels": sorted(c for c, v in heads.items() if v == version),
                         "accepted": gate.get("accepted"), "checks": gate.get("checks", []),
                         "reasons": gate.get("reasons", []),
                         "metrics": m.lineage.eval.get("metrics", {})})
        rows.sort(key=lambda r: str((r.get("training") or {}).get("run_id", "")), reverse=True)
        return rows[:MAX_CANDIDATES]

    async def flow_runs(self) -> dict[str, Any]:
        """The Prefect server's last flow runs, each with its UI link; without a server, say so
        (the candidates' lineage still names the training runs)."""
        url = self.config.prefect_ui_url
        if url is None:
            return {"configured": False, "runs": [], "error": None}
        from prefect.client.orchestration import PrefectClient
        from prefect.client.schemas.sorting import FlowRunSort

        base = url.rstrip("/")

        async def read():
            async with PrefectClient(api=f"{base}/api") as prefect:
                return await prefect.read_flow_runs(limit=MAX_FLOW_RUNS,
                                                    sort=FlowRunSort.START_TIME_DESC)

        try:  # the client retries a refused connection: bound the whole exchange
            runs = await asyncio.wait_for(read(), timeout=5)
        except Exception as exc:
            why = str(exc) or f"no answer within 5 s ({type(exc).__name__})"
            return {"configured": True, "ui": base, "runs": [],
                    "error": f"Prefect server at {base} did not answer: {why}"}
        return {"configured": True, "ui": base, "error": None, "runs": [
            {"id": str(r.id), "name": r.name, "state": r.state_name,
             "start": r.start_time.isoformat() if r.start_time else None,
             "link": f"{base}/runs/flow-run/{r.id}"} for r in runs]}

    # contributor page ----------------------------------------------------------------------------

    def models_using(self, dataset_ids: set[str]) -> list[dict[str, Any]]:
        """Versions whose training read one of `dataset_ids` (lineage.training.dataset_ids)."""
        out = []
        for version in self.client().versions():
            try:
                m = self.manifest(version)
            except Exception:
                continue  # an unverifiable version is no one's lineage
            used = sorted(dataset_ids & set(m.lineage.training.get("dataset_ids") or []))
            if used:
                out.append({"version": version, "name": m.name, "datasets": used,
                            "kind": m.lineage.training.get("kind")})
        return out


def usage_totals(state: Any) -> dict[str, Any]:
    """Usage by key and by node from the gateway's usage meter (`state.meter`, whose
    `report()` gives `{"keys": [...], "nodes": [...]}`), when it has one. Absent: say so."""
    meter = getattr(state, "meter", None)
    if meter is None:
        return {"available": False, "keys": [], "nodes": [], "error": None}
    try:
        report = meter.report()
    except Exception as exc:
        return {"available": True, "keys": [], "nodes": [], "error": str(exc)}
    return {"available": True, "keys": report.get("keys", []),
            "nodes": report.get("nodes", []), "error": None}
