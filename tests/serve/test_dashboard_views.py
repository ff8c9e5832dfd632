"""The maintainer and lineage views of the dashboard against a real signed registry: channel
history with the keys that signed it, a candidate's gate checks beside production's numbers, the
models trained on a contributor's datasets, and parts that are absent saying so."""

from __future__ import annotations

import asyncio

from registry.manifest import Lineage
from registry.publish import import_model, promote
from registry.signing import public_key_id
from serve.config import DashboardConfig
from serve.gateway.dashboard.registry_view import RegistryView, usage_totals

GATE = {"accepted": True, "reasons": [], "checks": [
    {"metric": "tools_heldout.accuracy", "kind": "improve", "production": 0.25,
     "candidate": 0.5, "delta": 0.25, "passed": True}]}


def test_channels_candidates_and_lineage(registry, tiny_model_dir, tmp_path):
    genesis = import_model(registry.store, tiny_model_dir, name="tiny",
                           release_keys=[registry.keys["release"]]).version_id
    candidate = import_model(registry.store, tiny_model_dir, name="tiny",
                             release_keys=[registry.keys["release"]], lineage=Lineage(
                                 parent=genesis, eval={"metrics": {}, "gate": GATE},
                                 training={"kind": "sft", "run_id": "run-1",
                                           "dataset_ids": ["sft-a"]})).version_id
    promote(registry.store, genesis, "production", [registry.keys["promote"]], note="genesis")
    promote(registry.store, candidate, "staging", [registry.keys["promote"]])
    promote(registry.store, candidate, "production", [registry.keys["promote2"]])
    view = RegistryView(DashboardConfig(registry_url=str(registry.path),
                                        trust_dir=tmp_path / "trust"))

    channels = {c["channel"]: c for c in view.channels()}
    production = channels["production"]["records"]
    assert [(r["sequence"], r["version"]) for r in production] == [(2, candidate), (1, genesis)]
    assert production[0]["signers"] == [public_key_id(registry.keys["promote2"].public_hex)]
    assert production[1]["signers"] == [public_key_id(registry.keys["promote"].public_hex)]
    assert channels["production"]["role"] == "promote" and production[1]["note"] == "genesis"

    [row] = view.candidates(view.channels())  # the genesis import has no parent: no candidate
    assert row["version"] == candidate and row["accepted"] is True
    assert row["channels"] == ["production", "staging"] and row["checks"] == GATE["checks"]

    assert [m["version"] for m in view.models_using({"sft-a"})] == [candidate]
    assert view.models_using({"other"}) == []


def test_absent_parts_say_so(tmp_path):
    view = RegistryView(DashboardConfig())
    assert not view.configured
    assert asyncio.run(view.flow_runs()) == {"configured": False, "runs": [], "error": None}
    unreachable = RegistryView(DashboardConfig(prefect_ui_url="http://127.0.0.1:9"))
    runs = asyncio.run(unreachable.flow_runs())
    assert runs["configured"] and runs["runs"] == [] and "did not answer" in runs["error"]

    class NoMeter:
        meter = None

    assert usage_totals(NoMeter())["available"] is False


def test_a_gateway_without_store_registry_or_nodes_says_so_on_each_page(tiny_model_dir):
    from fastapi.testclient import TestClient

    from serve.gateway.api import create_app
    from serve.gateway.dashboard.routes import router
    from tests.serve.test_api_limits import make_state

    state = make_state(tiny_model_dir, api_keys={"sk-app"})  # static keys, no node, no verifier
    app = create_app(state)
    app.include_router(router(state, DashboardConfig()))
    key = {"Authorization": "Bearer sk-app"}
    with TestClient(app) as client:
        shell = client.get("/dashboard")  # the shell needs no key and carries no data
        assert shell.status_code == 200 and "/dashboard/app.js" in shell.text
        assert "script-src 'self'" in shell.headers["content-security-policy"]
        assert client.get("/dashboard/chart.js").headers["content-type"].startswith(
            "text/javascript")
        assert client.get("/dashboard/api/me").status_code == 401  # the views do
        assert client.get("/dashboard/api/me", headers=key).json()["role"] == "app"
        swarm = client.get("/dashboard/api/swarm", headers=key).json()
        assert swarm["nodes"] == [] and swarm["route_error"] and not swarm["verification"]
        assert len(swarm["layers"]) == 4 and not any(layer["nodes"] for layer in swarm["layers"])
        no_store = client.get("/dashboard/api/contributor", headers=key)
        assert no_store.status_code == 404 and no_store.json()["error"]["code"] == "no_trace_store"
        assert client.get("/dashboard/api/maintainer", headers=key).status_code == 403
