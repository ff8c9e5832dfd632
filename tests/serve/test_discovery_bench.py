"""`shoal bench discovery` runs on a tiny config and writes its JSON and plot."""

from __future__ import annotations

import json

import pytest

from flows.config import ShoalConfig
from serve.bench_discovery import DiscoveryBenchConfig, run_discovery_bench
from serve.config import DhtConfig
from tests.serve.conftest import tiny_home

pytestmark = pytest.mark.slow


def test_discovery_bench_tiny(tmp_path, tmp_path_factory, tiny_model_dir):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    cfg = DiscoveryBenchConfig(sizes=[2], lookup_s=0.3, kills=1, routed=1,
                               model="tiny@production", out_dir=tmp_path)
    report = run_discovery_bench(cfg, ShoalConfig(home=home,
                                                  registry_url=str(home / "registry")))
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
    # a real node was started and a real gateway routed a completion through it (the benchmark
    # checks the route names that node), after the node's record showed in the DHT
    (sample,) = run["routed_samples"]
    assert 0 < sample["start_to_visible_s"] <= sample["start_to_routed_s"]
    assert run["start_to_routed"]["mean_s"] == round(sample["start_to_routed_s"], 3)
    assert report["summary"]["2"]["start_to_routed_s"] == run["start_to_routed"]["mean_s"]


def test_the_routed_part_refuses_timings_its_processes_do_not_use():
    with pytest.raises(ValueError, match="ttl_s"):
        DiscoveryBenchConfig(ttl_s=1.0, routed=1)
    assert DiscoveryBenchConfig(ttl_s=1.0, routed=0).ttl_s == 1.0
