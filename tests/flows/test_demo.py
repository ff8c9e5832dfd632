"""`make demo`'s job, the whole flywheel, end to end on the tiny model with every real component:
genesis, a verified swarm following `production`, the SDK workload with feedback, the curate flow,
DeepSpeed training, the gate, promotion, rollout, and the evaluation on the new version."""

from __future__ import annotations

import json

import pytest

from flows.config import ShoalConfig
from flows.demo import DemoConfig, run_demo

pytestmark = pytest.mark.slow


def test_flywheel_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir, prefect_harness):
    cfg = ShoalConfig(home=tmp_path / "home", registry_url=str(tmp_path / "home" / "registry"))
    config = DemoConfig(tasks=16, general=4, eval_items=4, gate_limit=2, concurrency=4, max_tokens=8,
                        eval_fraction=0.3, api_tools=False,  # the tiny context: 256 tokens
                        report_sets={"tools": "tools_heldout", "general": "regression"},
                        train={"max_steps": 6, "epochs": 3, "lr": 3e-3, "micro_batch": 2,
                               "max_len": 96},
                        gate={"improve": {"loglik.mean": 0.01}, "hold": {}})
    s = run_demo(cfg, config, source=tiny_model_dir, name="tiny")
    assert s["gate"]["accepted"] and s["promoted"]
    assert s["candidate"] != s["genesis"]
    for k in ("tools", "general"):
        assert s["eval_before"][k]["versions"] == [s["genesis"]]
        assert s["eval_after"][k]["versions"] == [s["candidate"]]  # all from the new version
        assert s["eval_before"][k]["n"] == 4 and len(s["eval_before"][k]["ci95"]) == 2
        assert s["paired"][k]["n"] == 4
    assert [r["version"] for r in s["channel"]][-2:] == [s["genesis"], s["candidate"]]
    assert all(n["version"] == s["candidate"] for n in s["nodes"])
    w = s["workload"]
    assert w["tasks"] == 16 + 4 + 3 and w["corrected"] + w["correct"] == w["tasks"]
    t = s["traces"]
    assert t["optout_stored"] == 0 and t["stored"] == 16 + 4 + 3 + 1  # alice + bob, not app/optout
    assert t["scrubbed_records"] >= 1 and t["replaced"].get("EMAIL_ADDRESS") == 1
    assert t["deduplicated"]["exact"] >= 3
    assert s["datasets"]["sft"]["train"] > 0
    assert s["training"]["loss_last"] < s["training"]["loss_first"]
    assert s["verifier"]["failures"] == 0 and s["verifier"]["trusted"] == 3
    saved = json.loads((cfg.home / "run" / "demo.json").read_text())
    assert saved["candidate"] == s["candidate"]
    assert (cfg.home / "run" / "demo.png").stat().st_size > 5000
