"""`shoal bench train` runs on a tiny configuration and reports both sides."""

from __future__ import annotations

import json

import pytest

from train.bench import run_train_bench


@pytest.mark.slow
def test_train_bench_runs_both_loops_and_writes_json_and_plot(tiny_model_dir, tmp_path):
    report = run_train_bench(tiny_model_dir, tmp_path, steps=3, micro_batch=2, procs=2,
                             max_len=64)
    assert json.loads((tmp_path / "train.json").read_text()) == report
    assert (tmp_path / "train.png").stat().st_size > 1000
    assert report["deepspeed"]["tokens_per_s"] > 0 and report["torch"]["tokens_per_s"] > 0
    assert report["ratio_deepspeed_over_torch"] == pytest.approx(
        report["deepspeed"]["tokens_per_s"] / report["torch"]["tokens_per_s"], rel=1e-2)
