"""Draft distillation raises acceptance; the evaluation harness scores by program; the gate accepts
a better candidate and refuses a worse one, with a report."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from curate.builders import split
from curate.card import write_dataset
from curate.config import SplitConfig
from tests.train.conftest import CARD, WORDS, noised_copy
from train.config import TrainConfig
from train.evaluate import evaluate, load_model, metrics, score
from train.gate import GateConfig, decide
from train.launch import Topology, launch


def _distill_set(target_dir: Path, root: Path, n: int = 80) -> Path:
    """Prompts with the target's own greedy answers: what the curate flow's distill set holds."""
    from train.evaluate import generate

    model, tok = load_model(target_dir)
    rng = random.Random(5)
    prompts = [[{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(5))}]
               for _ in range(n)]
    answers = generate(model, tok, prompts, max_new_tokens=16, batch=16)
    rows = [{"messages": p + [{"role": "assistant", "content": a}], "request_id": f"x{i}",
             "trace_id": f"x{i}", "model_version": "target"}
            for i, (p, a) in enumerate(zip(prompts, answers))]
    card = write_dataset(root, "distill", split(rows, SplitConfig(eval_fraction=0.25)), CARD)
    return root / card.dataset_id


@pytest.mark.slow
def test_draft_distillation_raises_acceptance_against_the_target(tiny_model_dir, tmp_path):
    from curate.card import load_split
    from train.draft import acceptance_rate
    from train.model import truncate

    data_dir = _distill_set(tiny_model_dir, tmp_path / "data")
    config = TrainConfig(kind="distill", model=str(tiny_model_dir), datasets=[str(data_dir)],
                         output=str(tmp_path / "draft"), draft_layers=2, lr=5e-3,
                         micro_batch=4, max_len=64, epochs=12, max_steps=96)
    summary = launch(config, Topology(procs=2))
    assert summary.eval_after["loss"] < summary.eval_before["loss"]
    target, tok = load_model(tiny_model_dir)
    draft, _ = load_model(tmp_path / "draft" / "model")
    assert draft.config.num_hidden_layers == 2
    untrained, _ = load_model(tiny_model_dir)
    truncate(untrained, 2)
    prompts = [r["messages"][:-1] for r in load_split(data_dir, "eval")]
    before = acceptance_rate(untrained, target, tok, prompts)["rate"]
    after = acceptance_rate(draft, target, tok, prompts)["rate"]
    assert after > before + 0.2, (before, after)


def test_scoring_is_by_program():
    call = {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}
    item = {"id": "x", "check": "tool_call", "answer": call}
    assert score(item, 'Sure: {"name": "get_weather", "arguments": {"city": "Lyon", '
                       '"unit": "celsius"}}')
    assert not score(item, '{"name": "get_weather", "arguments": {"city": "Lyon"}}')
    assert not score(item, '{"name": "get_weather", "arguments": {"city": "lyon", '
                           '"unit": "celsius"}}')
    amount = {"id": "y", "check": "tool_call", "answer": {"name": "convert_currency", "arguments": {
        "amount": 23, "from_currency": "AUD", "to_currency": "NOK"}}}
    assert score(amount, '{"name": "convert_currency", "arguments": {"amount": "23.0", '
                         '"from_currency": "AUD", "to_currency": "NOK"}}')
    assert score({"id": "z", "check": "contains", "answer": ["Paris"]}, "It is paris.")
    assert score({"id": "j", "check": "json", "answer": None}, 'Here: {"a": 1} done')
    assert not score({"id": "j", "check": "json", "answer": None}, "no json here {")
    with pytest.raises(ValueError, match="unknown check"):
        score({"id": "q", "check": "vibes"}, "")


def test_gate_decides_with_margins_and_reports_every_check():
    cfg = GateConfig(improve={"tools_heldout.accuracy": 0.05}, hold={"regression.accuracy": 0.1})
    prod = {"tools_heldout.accuracy": 0.10, "regression.accuracy": 0.60}
    better = decide({"tools_heldout.accuracy": 0.40, "regression.accuracy": 0.55}, prod, cfg)
    assert better.accepted and all(c.passed for c in better.checks)
    slight = decide({"tools_heldout.accuracy": 0.12, "regression.accuracy": 0.60}, prod, cfg)
    assert not slight.accepted and "tools_heldout.accuracy" in slight.reasons[0]
    regressed = decide({"tools_heldout.accuracy": 0.90, "regression.accuracy": 0.30}, prod, cfg)
    assert not regressed.accepted and "regression.accuracy" in regressed.reasons[0]
    missing = decide({}, prod, cfg)
    assert not missing.accepted and "not measured" in missing.reasons[0]


@pytest.mark.slow
def test_gate_accepts_the_trained_candidate_and_refuses_a_damaged_one(runs, tiny_model_dir,
                                                                      sft_dir, tmp_path):
    from curate.card import load_split

    config, _ = runs("sft")
    heldout = load_split(sft_dir, "eval")
    limit = 4
    prod = metrics(evaluate(tiny_model_dir, heldout_rows=heldout, limit=limit))
    cand = metrics(evaluate(Path(config.output) / "model", heldout_rows=heldout, limit=limit))
    # a deliberately worse candidate: the production weights with noise added
    noised_copy(tiny_model_dir, tmp_path / "worse", 0.05)
    worse = metrics(evaluate(tmp_path / "worse", heldout_rows=heldout, limit=limit))
    gate = GateConfig(improve={"loglik.mean": 0.5}, hold={"general_gate.accuracy": 0.5})
    assert decide(cand, prod, gate).accepted
    refused = decide(worse, prod, gate)
    assert not refused.accepted and refused.reasons
    assert set(prod) >= {"tools_api_gate.accuracy", "general_gate.accuracy", "loglik.mean"}
