"""`shoal bench swarm` runs end to end on a tiny config and writes its JSON and plot."""

from __future__ import annotations

import json

import pytest

from flows.config import ShoalConfig
from serve.bench import SwarmBenchConfig, run_swarm_bench
from tests.serve.conftest import tiny_home

pytestmark = pytest.mark.slow


def test_swarm_bench_tiny(tmp_path_factory, tiny_model_dir, tmp_path):
    home = tiny_home(tmp_path_factory, tiny_model_dir)
    cfg = SwarmBenchConfig(model="tiny@production", nodes=3, delays_ms=[0, 5], concurrency=[1, 2],
                           decode_tokens=4, prompt_lengths=[8], out_dir=tmp_path / "out",
                           drafters=["off", "prompt_lookup", "suffix"], spec_tokens=6,
                           spec_prompts=3, proofs=True, proof_rounds=2)
    report = run_swarm_bench(cfg, ShoalConfig(home=home, registry_url=str(home / "registry")))
    saved = json.loads((tmp_path / "out" / "swarm.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    assert (tmp_path / "out" / "swarm.png").stat().st_size > 10_000
    for delay in ("0", "5"):
        for mode in ("chain", "naive"):
            row = saved["results"]["swarm"][delay][mode]
            assert row["decode_tok_s"] > 0 and row["aggregate_2_tok_s"] > 0
    proofs = saved["results"]["proofs"]
    assert 0 < proofs["detection"]["one_layer_swap"]["per_challenge"] <= 1
    assert proofs["calibration"]["honest_rel_error_max"] < proofs["calibration"]["tolerance"]
    assert proofs["calibration"]["bf16_copy_rel_error_min"] > proofs["calibration"]["tolerance"]
    assert proofs["default"]["checks"] >= 3  # admission of every node, then the schedule
    assert proofs["protocol"]["decode_us_per_traversal"] > 0
    assert proofs["spot_checks"]["mirror_ms_per_token"] > 0
    odds = proofs["spot_checks"]["expected_requests_before_eviction"]
    assert odds["p=1.0"] < odds["p=0.1"] < odds["p=0.01"]  # rarer cheating takes longer
    assert 0 < saved["summary"]["proofs"]["protocol_share_of_decode_time"] < 1
    spec = saved["results"]["speculation"]
    assert set(spec) == {"split", "agentic", "open_chat"}
    for w in ("agentic", "open_chat"):  # measured on held-out prompts, warmed on others
        split = saved["summary"]["speculation"]["split"][w]
        assert split["shared_prompts"] == 0 and split["tuning_prompts"] > 0
        assert split["measured"] != split["warmed_or_tuned_on"]
    for row in spec["agentic"].values():
        assert set(row) == {"off", "prompt_lookup", "suffix", "naive"}
        assert all(0 < cell["fraction_of_limit"] for cell in row.values())
        assert row["off"]["tokens_per_traversal"] == pytest.approx(1.0)
    # the relay really delays: 5 ms per hop is slower than none, in both modes
    for mode in ("chain", "naive"):
        assert (saved["results"]["swarm"]["5"][mode]["decode_tok_s"]
                < saved["results"]["swarm"]["0"][mode]["decode_tok_s"])
