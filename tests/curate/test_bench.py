"""`shoal bench curate` runs on a tiny configuration and reports what it measured."""

from __future__ import annotations

import json

from curate.bench import run_curate_bench


def test_curate_bench_runs_and_writes_json_and_plot(tmp_path):
    report = run_curate_bench(tmp_path, traces=200, tokens=120, workers=(1,), chunk=50)
    assert json.loads((tmp_path / "curate.json").read_text()) == report
    assert (tmp_path / "curate.png").stat().st_size > 1000
    run = report["runs"][0]
    assert run["traces_per_min"] > 0 and run["kept"] + sum(run["dropped"].values()) == 200
    assert run["dropped"]["exact"] > 0  # the bench corpus carries exact copies
