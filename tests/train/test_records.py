"""The run records: `run.json`, `eval.json` and `registered.json` read and written with the keys the
flows always wrote, unknown keys refused, and the lineage a candidate carries built from them."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from train.exceptions import RunError
from train.gate import GateConfig, decide
from train.records import (DraftEval, EvalReport, ModelEval, Registered, RunRecord,
                           StoppedSummary, TrainSummary, load_summary)

SUMMARY = {"kind": "sft", "steps": 8, "world_size": 2, "trainable_parameters": 1234,
           "eval_before": {"loss": 3.5}, "eval_after": {"loss": 1.25}, "loss_first": 3.6,
           "loss_last": 1.3, "loss_curve": [3.6, 2.0, 1.3], "tokens": 4096, "tokens_per_s": 512.5,
           "config_digest": "c" * 64, "zero_stage": 2}
RUN = {"run_id": "20260101-120000-abcdef", "run_dir": "/runs/20260101-120000-abcdef",
       "kind": "sft", "parent": "sha256:" + "p" * 64, "parent_dir": "/models/p-full",
       "datasets": [{"id": "sft-0123456789abcdef", "rows_digest": "r" * 64}],
       "config_digest": "c" * 64, "summary": SUMMARY}
PROD = {"tools_heldout.accuracy": 0.1, "regression.accuracy": 0.6, "loglik.mean": -2.0}
CAND = {"tools_heldout.accuracy": 0.4, "regression.accuracy": 0.55, "loglik.mean": -1.0}


def _gate(candidate=CAND, production=PROD) -> dict:
    rules = GateConfig(improve={"tools_heldout.accuracy": 0.05, "json.accuracy": 0.0},
                       hold={"regression.accuracy": 0.1})
    return decide(candidate, production, rules).model_dump()


def test_run_record_keeps_the_keys_of_run_json(tmp_path):
    record = RunRecord.parse(copy.deepcopy(RUN))
    assert isinstance(record.summary, TrainSummary) and record.summary.loss_last == 1.3
    assert record.dump() == RUN
    record.save(tmp_path)
    assert json.loads((tmp_path / "run.json").read_text()) == RUN
    assert RunRecord.load(tmp_path) == record
    with pytest.raises(ValidationError, match="surprise"):
        RunRecord.parse({**RUN, "surprise": 1})
    with pytest.raises(RunError, match=str(tmp_path / "nothing")):
        RunRecord.load(tmp_path / "nothing")


def test_a_stopped_run_loads_but_has_no_candidate(tmp_path):
    stopped = {"kind": "sft", "stopped_at": 3, "steps": 8, "loss_curve": [3.6, 2.0, 1.9]}
    (tmp_path / "summary.json").write_text(json.dumps(stopped))
    assert isinstance(load_summary(tmp_path), StoppedSummary)
    record = RunRecord.parse({**RUN, "summary": stopped})
    assert record.dump()["summary"] == stopped
    with pytest.raises(RunError, match="stopped at step 3 of 8"):
        record.lineage(None)


def test_gate_checks_without_numbers_leave_them_out():
    checks = _gate()["checks"]
    assert [("delta" in c, c["passed"]) for c in checks] == [(True, True), (False, False),
                                                             (True, True)]
    assert checks[1] == {"metric": "json.accuracy", "kind": "improve", "passed": False,
                         "why": "not measured on both models"}


def test_eval_reports_parse_by_kind_and_keep_their_keys(tmp_path):
    model = {"kind": "sft", "production": {"model": "/p", "sets": {}, "seconds": 1.0},
             "candidate": {"model": "/c", "sets": {}, "loglik": {"mean": None}},
             "gate": _gate(), "metrics": CAND, "production_metrics": PROD}
    report = EvalReport.parse(copy.deepcopy(model))
    assert isinstance(report, ModelEval) and not report.gate.accepted
    assert report.dump() == model
    rates = {"before": {"rate": 0.15, "tokens": 96, "prompts": 4},
             "after": {"rate": None, "tokens": 0, "prompts": 4}}
    draft = {"kind": "distill", "acceptance": rates, "gate": _gate(), "metrics": {}}
    parsed = EvalReport.parse(copy.deepcopy(draft))
    assert isinstance(parsed, DraftEval) and parsed.dump() == draft
    assert parsed.acceptance.metrics("before") == {"acceptance.rate": 0.15}
    assert parsed.acceptance.metrics("after") == {}  # not measured: the gate says so
    with pytest.raises(ValidationError):
        EvalReport.parse({**draft, "production_metrics": PROD})
    assert EvalReport.load_if_present(tmp_path) is None
    parsed.save(tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text()) == draft
    assert EvalReport.load_if_present(tmp_path) == parsed


def test_registered_keeps_its_keys(tmp_path):
    body = {"version": "sha256:" + "v" * 64, "name": "tiny", "promoted_to": None, "gate": None}
    Registered.parse(body).save(tmp_path)
    assert json.loads((tmp_path / "registered.json").read_text()) == body
    accepted = {**body, "promoted_to": "staging", "gate": _gate()}
    assert Registered.parse(copy.deepcopy(accepted)).dump() == accepted


def test_lineage_names_parent_datasets_config_and_eval():
    report = EvalReport.parse({"kind": "sft", "production": {}, "candidate": {},
                               "gate": _gate(), "metrics": CAND, "production_metrics": PROD})
    record = RunRecord.parse(copy.deepcopy(RUN))
    lineage = record.lineage(report)
    assert lineage.parent == RUN["parent"] and lineage.draft_for is None
    assert lineage.datasets == ["r" * 64] and lineage.training_config == "c" * 64
    assert lineage.training == {"kind": "sft", "run_id": RUN["run_id"], "steps": 8,
                                "tokens": 4096, "world_size": 2, "loss_first": 3.6,
                                "loss_last": 1.3, "eval_loss_before": 3.5,
                                "eval_loss_after": 1.25, "dataset_ids": ["sft-0123456789abcdef"]}
    assert lineage.eval == {"metrics": CAND, "gate": _gate()}
    assert record.lineage(None).eval == {}
    assert (record.candidate_name("tiny"), record.staging_channel) == ("tiny", "staging")

    draft = RunRecord.parse({**copy.deepcopy(RUN), "kind": "distill",
                             "summary": {**SUMMARY, "kind": "distill", "eval_before": {}}})
    assert draft.lineage(None).draft_for == RUN["parent"]
    assert draft.lineage(None).training["eval_loss_before"] is None
    assert (draft.candidate_name("tiny"), draft.staging_channel) == ("tiny-draft",
                                                                     "staging-draft")


def test_a_killed_builds_lock_is_removed_and_a_live_one_kept(tmp_path):
    """A torch extension build killed mid-way leaves its lock, and every later DeepSpeed start
    would wait for it forever; the launcher removes such a lock by its age and keeps a fresh one."""
    import os
    import time

    from train.launch import STALE_BUILD_LOCK_S, remove_stale_build_locks

    stale, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "other_ext" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(stale, (old, old))
    assert remove_stale_build_locks(tmp_path) == [stale]
    assert not stale.exists() and live.exists()
