"""`make demo`'s job, end to end on the tiny model: genesis, a verified swarm, the SDK, traces."""

from __future__ import annotations

import json

import pytest

from flows.config import ShoalConfig
from flows.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path, tiny_model_dir):
    cfg = ShoalConfig(home=tmp_path / "home", registry_url=str(tmp_path / "home" / "registry"))
    summary = run_demo(cfg, source=tiny_model_dir, name="tiny")
    assert [a["role"] for a in summary["answers"]] == ["app", "contributor"]
    assert all(len(a["route"]) == 3 for a in summary["answers"])
    assert summary["answers"][0]["trace_id"] is None  # apps never contribute
    assert summary["answers"][1]["trace_id"]  # the contributor opted in
    assert summary["traces_stored"] == 1
    assert summary["verifier"]["failures"] == 0 and summary["verifier"]["checks_passed"] >= 3
    assert json.loads((cfg.home / "run" / "demo.json").read_text())["traces_stored"] == 1
