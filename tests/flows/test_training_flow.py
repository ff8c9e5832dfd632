"""The `train` → `evaluate` → `register` flows on the tiny model: a refused candidate is registered
but not promoted; an accepted one lands on `staging` with lineage naming the exact parent, dataset
digests, training config digest and eval results; `production` never moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.card import load_card
from flows.config import ShoalConfig
from tests.serve.conftest import tiny_home
from tests.train.conftest import make_sft

SETTINGS = {"lr": 2e-3, "micro_batch": 4, "max_len": 64, "max_steps": 8, "epochs": 4}


@pytest.fixture
def shoal(tmp_path_factory, tiny_model_dir, monkeypatch) -> ShoalConfig:
    """A SHOAL_HOME whose registry has the tiny model on `production`, set in the environment."""
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    monkeypatch.setenv("SHOAL_HOME", str(home))
    monkeypatch.delenv("SHOAL_REGISTRY", raising=False)
    return ShoalConfig.at(home)


@pytest.mark.slow
def test_train_evaluate_register_with_gate_and_lineage(shoal, prefect_harness):
    from flows.training import evaluate, register, train

    home = shoal.home
    client = shoal.client()
    production = client.resolve("production")
    dataset = make_sft(shoal.datasets_dir)

    meta = train(str(home), "sft", "production", [dataset.name], SETTINGS, 2)
    assert meta["parent"] == production and meta["summary"]["steps"] == 8
    assert "[train] step 8/8" in (Path(meta["run_dir"]) / "launcher.log").read_text()
    assert json.loads((Path(meta["run_dir"]) / "run.json").read_text()) == meta

    strict = evaluate(str(home), meta["run_dir"], gate={"improve": {"loglik.mean": 100.0}},
                      limit=4)
    assert not strict["gate"]["accepted"] and "loglik.mean" in strict["gate"]["reasons"][0]
    refused = register(str(home), meta["run_dir"])
    assert refused["promoted_to"] is None
    assert not shoal.store().exists("channels/staging/head.json")

    lenient = evaluate(str(home), meta["run_dir"],
                       gate={"improve": {"loglik.mean": 0.5},
                             "hold": {"general_gate.accuracy": 0.5}},
                       limit=4)
    assert lenient["gate"]["accepted"]
    on_disk = json.loads((Path(meta["run_dir"]) / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(lenient))  # as JSON holds it (intervals as lists)
    accepted = register(str(home), meta["run_dir"])
    assert accepted["promoted_to"] == "staging"
    # the eval results are part of the lineage, so the two registrations are distinct versions
    assert not client.manifest(refused["version"]).lineage.eval["gate"]["accepted"]

    client = shoal.client()
    manifest = client.manifest(accepted["version"])
    assert manifest.lineage.parent == production
    assert manifest.lineage.datasets == [load_card(dataset).rows_digest]
    assert manifest.lineage.training_config == meta["config_digest"]
    assert manifest.lineage.training["loss_last"] < manifest.lineage.training["loss_first"]
    assert manifest.lineage.eval["gate"]["accepted"]
    assert client.channel("staging").version == accepted["version"]
    assert client.resolve("production") == production  # promotion to production is manual
    history = json.loads((Path(meta["run_dir"]) / "registered.json").read_text())
    assert history["version"] == accepted["version"]


@pytest.mark.slow
def test_a_distilled_draft_is_registered_for_its_target(shoal, tiny_model_dir, prefect_harness):
    from flows.training import improve
    from tests.train.test_distill_and_gate import _distill_set

    home = shoal.home
    target = shoal.client().resolve("production")
    dataset = _distill_set(tiny_model_dir, shoal.datasets_dir)
    result = improve(str(home), "distill", "production", [dataset.name],
                     {"draft_layers": 2, "lr": 5e-3, "micro_batch": 4, "max_len": 64,
                      "epochs": 12, "max_steps": 60}, 2, None, 16)
    rates = result["eval"]["acceptance"]
    assert rates["after"]["rate"] > rates["before"]["rate"]
    registered = result["registered"]
    assert registered["promoted_to"] == "staging-draft" and registered["name"] == "tiny-draft"
    manifest = shoal.client().manifest(registered["version"])
    assert manifest.lineage.draft_for == target and manifest.num_layers == 2
    assert manifest.lineage.datasets == [load_card(dataset).rows_digest]
