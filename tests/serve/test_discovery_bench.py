"""`shoal bench discovery` runs on a tiny config and writes its JSON and plot."""

from __future__ import annotations

import json

import pytest

from serve.bench_discovery import DiscoveryBenchConfig, run_discovery_bench
from serve.config import DhtConfig

pytestmark = pytest.mark.slow


def test_discovery_bench_tiny(tmp_path):
    cfg = DiscoveryBenchConfig(sizes=[2], lookup_s=0.3, kills=1, ttl_s=1.0, announce_s=0.25,
                               out_dir=tmp_path)
    report = run_discovery_bench(cfg)
    assert json.loads((tmp_path / "discovery.json").read_text()) == json.loads(
        json.dumps(report))
    assert (tmp_path / "discovery.png").stat().st_size > 0
    (run,) = report["runs"]
    assert run["nodes"] == 2 and run["lookups"] >= 1 and run["start_to_visible"]["n"] == 2
    # a dead announcer leaves the view once its last record is older than the TTL (plus one
    # lookup, which may wait out the dead peer's RPC timeout, and slack for a loaded machine)
    removal, rpc_timeout_s = run["death_to_removal"], DhtConfig.model_fields[
        "rpc_timeout_s"].default
    assert 0 < removal["min_s"] <= removal["max_s"] <= cfg.ttl_s + rpc_timeout_s + 1.5
    assert run["removal_bound_s"] == cfg.ttl_s + rpc_timeout_s
