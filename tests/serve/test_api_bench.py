"""`shoal bench api` runs end to end on a tiny config: a real gateway process over a stub engine,
concurrent clients, and a JSON report with throughput, latency, errors and server memory."""

from __future__ import annotations

import json

import pytest

from serve.bench_api import ApiBenchConfig, run_api_bench

pytestmark = pytest.mark.slow


def test_api_bench_tiny(tiny_model_dir, tmp_path):
    cfg = ApiBenchConfig(model_dir=tiny_model_dir, out_dir=tmp_path, clients=8, duration_s=2.0, baseline_s=1.0,
                         warmup_s=0.5)
    report = run_api_bench(cfg)
    saved = json.loads((tmp_path / "api.json").read_text())
    assert saved["requests"] == report["requests"] > 0
    assert saved["errors"] == 0 and saved["statuses"] == {"200": saved["requests"]}, saved
    latency = saved["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert saved["server_rss_mb"]["peak"] > 0
    assert saved["auth_only"]["errors"] == 0 and saved["auth_only"]["requests"] > 0
